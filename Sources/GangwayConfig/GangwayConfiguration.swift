import GangwayAMQPCore

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The two files the edge, the workers and `gangway check` read, loaded and validated together.
public struct GangwayConfiguration: Sendable {
    public var topology: Topology
    public var routes: RouteTable

    public init(topology: Topology, routes: RouteTable) {
        self.topology = topology
        self.routes = routes
    }

    /// Loads `definitions.json` then `routes.yaml`, reporting the problems of both.
    /// - Throws: ``ConfigurationError`` with every problem found, each with file and line.
    public static func load(routesPath: String, topologyPath: String) throws(ConfigurationError) -> GangwayConfiguration {
        var problems: [ConfigurationError.Problem] = []
        var topology = Topology()
        do {
            topology = try DefinitionsFile.parse(try readFile(topologyPath), file: topologyPath)
        } catch {
            problems += error.problems
        }
        var routes = RouteTable(routes: [])
        do {
            routes = try RoutesFile.parse(try readFile(routesPath), file: routesPath, topology: topology)
        } catch {
            problems += error.problems
        }
        if !problems.isEmpty { throw ConfigurationError(problems: problems) }
        return GangwayConfiguration(topology: topology, routes: routes)
    }

    /// Loads only the topology, for workers and `gangway topology apply`.
    public static func loadTopology(path: String) throws(ConfigurationError) -> Topology {
        try DefinitionsFile.parse(try readFile(path), file: path)
    }

    static func readFile(_ path: String) throws(ConfigurationError) -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(problems: [.init(file: path, line: 0, message: "cannot read the file (missing or not readable)")])
        }
        guard let text = String(validating: data, as: UTF8.self) else {
            throw ConfigurationError(problems: [.init(file: path, line: 0, message: "the file is not UTF-8 text")])
        }
        return text
    }
}
