import ArgumentParser
import GangwayAMQPCore
import GangwayConfig
import Logging

#if canImport(Glibc)
import Glibc
#endif

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Where the broker is. Flag, then `GANGWAY_AMQP_URL`, then the local default.
struct BrokerOptions: ParsableArguments {
    @Option(name: .customLong("amqp-url"), help: "AMQP URL (amqp:// or amqps://). Default: $GANGWAY_AMQP_URL or amqp://guest:guest@localhost:5672/")
    var amqpURL: String?

    static var environmentURL: String? {
        ProcessInfo.processInfo.environment["GANGWAY_AMQP_URL"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The URL, parsed, with the files it names checked: a connection that cannot read its CA
    /// or client certificate would retry forever, so the command refuses to start instead.
    func url() throws -> AMQPURL {
        let text = amqpURL ?? Self.environmentURL ?? "amqp://guest:guest@localhost:5672/"
        let url: AMQPURL
        do {
            url = try AMQPURL(text)
        } catch {
            throw ValidationError("invalid AMQP URL: \(error)")
        }
        for (option, path) in url.files {
            var info = stat()
            let why: String? =
                stat(path, &info) != 0 ? (errno == ENOENT ? "there is no such file" : String(cString: strerror(errno)))
                : info.st_mode & S_IFMT == S_IFDIR ? "it is a directory"
                : access(path, R_OK) != 0 ? "it cannot be read"
                : nil
            if let why { throw ValidationError("invalid AMQP URL: \(option) \(path): \(why)") }
        }
        return url
    }
}

/// The two configuration files. Flag, then environment, then `topology/…` in the working
/// directory.
struct FileOptions: ParsableArguments {
    @Option(help: "Routes file. Default: $GANGWAY_ROUTES or topology/routes.yaml")
    var routes: String?

    @Option(help: "RabbitMQ definitions file. Default: $GANGWAY_TOPOLOGY or topology/definitions.json")
    var topology: String?

    var routesPath: String {
        routes ?? ProcessInfo.processInfo.environment["GANGWAY_ROUTES"] ?? "topology/routes.yaml"
    }

    var topologyPath: String {
        topology ?? ProcessInfo.processInfo.environment["GANGWAY_TOPOLOGY"] ?? "topology/definitions.json"
    }

    func load() throws -> GangwayConfiguration {
        do {
            return try GangwayConfiguration.load(routesPath: routesPath, topologyPath: topologyPath)
        } catch {
            throw ConfigurationFailure(error: error)
        }
    }

    func loadTopology() throws -> Topology {
        do {
            return try GangwayConfiguration.loadTopology(path: topologyPath)
        } catch {
            throw ConfigurationFailure(error: error)
        }
    }
}

/// Prints every configuration problem, one per line, and exits non-zero.
struct ConfigurationFailure: Error, CustomStringConvertible {
    var error: ConfigurationError
    var description: String {
        "invalid configuration (\(error.problems.count) problem\(error.problems.count == 1 ? "" : "s")):\n\(error)"
    }
}

struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical. Default: $LOG_LEVEL or info")
    var logLevel: String?

    func bootstrap(label: String) -> Logger {
        let level = (logLevel ?? ProcessInfo.processInfo.environment["LOG_LEVEL"]).flatMap(Logger.Level.init(rawValue:)) ?? .info
        LoggingBootstrap.once(level: level)
        return Logger(label: label)
    }
}

enum LoggingBootstrap {
    nonisolated(unsafe) private static var done = false

    /// Call from the main task only, before any logger is made.
    static func once(level: Logger.Level) {
        guard !done else { return }
        done = true
        LoggingSystem.bootstrap { label in
            var handler = LazyMetadataLogHandler(StreamLogHandler.standardError(label: label))
            handler.logLevel = level
            return handler
        }
    }
}

/// StreamLogHandler formats its metadata again on every change, and the HTTP server sets a
/// request id on every request's logger whether or not anything is logged. This keeps the
/// metadata aside and formats it only for a message that is written.
struct LazyMetadataLogHandler: LogHandler {
    private var inner: StreamLogHandler
    var metadata: Logger.Metadata = [:]

    init(_ inner: StreamLogHandler) {
        self.inner = inner
    }

    var logLevel: Logger.Level {
        get { inner.logLevel }
        set { inner.logLevel = newValue }
    }

    var metadataProvider: Logger.MetadataProvider? {
        get { inner.metadataProvider }
        set { inner.metadataProvider = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var handler = inner
        if !metadata.isEmpty { handler.metadata = metadata }
        handler.log(event: event)
    }
}
