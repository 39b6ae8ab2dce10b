import GangwayAMQPCore
import Yams

/// Reads `routes.yaml` and compiles it against the topology into a ``RouteTable``.
///
/// ```yaml
/// version: 1
/// defaults:
///   exchange: gangway.rpc
///   timeout: 5s
///   max_body: 1MiB
///   forward_headers: [accept, content-type]
/// routes:
///   - name: echo
///     method: POST
///     path: /v1/echo
///     shape: request-reply
///     routing_key: demo.echo
/// ```
public enum RoutesFile {
    public static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    /// The longest timeout a route may ask for: requests hold a connection this long.
    public static let maximumTimeoutMilliseconds = 600_000

    struct Defaults {
        var exchange = WireContract.defaultRPCExchange
        var timeoutMilliseconds = 5_000
        var maxBodyBytes = 1 << 20
        var forwardHeaders: Set<String> = []
    }

    private static let topKeys: Set<String> = ["version", "defaults", "routes"]
    private static let defaultKeys: Set<String> = ["exchange", "timeout", "max_body", "forward_headers"]
    private static let routeKeys: Set<String> = [
        "name", "method", "path", "shape", "exchange", "routing_key", "queue", "timeout", "max_body", "forward_headers",
    ]

    /// - Parameters:
    ///   - text: the YAML.
    ///   - file: its name, for messages.
    ///   - topology: exchanges a route names must be declared here; its bindings give the queue
    ///     that serves a route when the route names none.
    /// - Throws: ``ConfigurationError`` listing every problem found.
    public static func parse(_ text: String, file: String, topology: Topology) throws(ConfigurationError) -> RouteTable {
        let reader = NodeReader(file: file)
        let routes = read(text, reader, topology)
        if !reader.problems.isEmpty { throw ConfigurationError(problems: reader.problems) }
        return RouteTable(routes: routes)
    }

    static func read(_ text: String, _ r: NodeReader, _ topology: Topology) -> [Route] {
        guard let root = r.compose(text), let pairs = r.mapping(root, "the routes file", allowed: topKeys) else { return [] }
        var defaults = Defaults()
        var routeNodes: [Node] = []
        var sawVersion = false
        var sawRoutes = false
        for (key, _, value) in pairs {
            switch key {
            case "version":
                sawVersion = true
                if r.string(value, "version") != "1" { r.problem(value, "unsupported version; this Gangway reads version: 1") }
            case "defaults":
                readDefaults(value, r, &defaults, topology)
            case "routes":
                sawRoutes = true
                routeNodes = r.sequence(value, "routes") ?? []
            default:
                continue
            }
        }
        if !sawVersion { r.problem(root, "missing 'version: 1'") }
        if !sawRoutes { r.problem(root, "missing 'routes:' list") }

        var routes: [Route] = []
        var seenPaths: [String: Int] = [:]
        var seenNames: [String: Int] = [:]
        for node in routeNodes {
            guard let route = readRoute(node, r, defaults, topology) else { continue }
            let key = "\(route.method) \(canonical(route.path))"
            if let line = seenPaths[key] {
                r.problem(node, "route \(route.method) \(route.path) duplicates the route at line \(line)")
                continue
            }
            if let line = seenNames[route.name] {
                r.problem(node, "route name '\(route.name)' is already used at line \(line)")
                continue
            }
            seenPaths[key] = route.line
            seenNames[route.name] = route.line
            routes.append(route)
        }
        return routes
    }

    /// Two templates that differ only in parameter names match the same requests.
    private static func canonical(_ path: PathTemplate) -> String {
        path.segments.map { if case .literal(let s) = $0 { return s } else { return "{}" } }.joined(separator: "/")
    }

    private static func readDefaults(_ node: Node, _ r: NodeReader, _ d: inout Defaults, _ topology: Topology) {
        guard let pairs = r.mapping(node, "defaults", allowed: defaultKeys) else { return }
        for (k, _, v) in pairs {
            switch k {
            case "exchange":
                if let e = exchange(v, r, topology) { d.exchange = e }
            case "timeout":
                if let t = timeout(v, r) { d.timeoutMilliseconds = t }
            case "max_body":
                if let b = maxBody(v, r) { d.maxBodyBytes = b }
            case "forward_headers":
                if let h = headers(v, r) { d.forwardHeaders = h }
            default: continue
            }
        }
    }

    private static func readRoute(_ node: Node, _ r: NodeReader, _ d: Defaults, _ topology: Topology) -> Route? {
        guard let pairs = r.mapping(node, "a route", allowed: routeKeys) else { return nil }
        let line = node.mark?.line ?? 0
        let before = r.problems.count
        var name: String?
        var method: String?
        var path: PathTemplate?
        var pathNode: Node?
        var shape = Route.Shape.requestReply
        var exchange = d.exchange
        var routingKey: KeyTemplate?
        var routingKeyNode: Node?
        var queue: KeyTemplate?
        var queueNode: Node?
        var timeoutMs = d.timeoutMilliseconds
        var maxBody = d.maxBodyBytes
        var forward = d.forwardHeaders
        for (k, _, v) in pairs {
            switch k {
            case "name":
                if let s = r.string(v, "name") {
                    if s.isEmpty || s.contains(where: { $0.isWhitespace }) { r.problem(v, "route name '\(s)' must be non-empty without spaces") }
                    name = s
                }
            case "method":
                if let s = r.string(v, "method") {
                    let m = s.uppercased()
                    if methods.contains(m) { method = m } else { r.problem(v, "unknown HTTP method '\(s)'; expected one of \(methods.sorted().joined(separator: ", "))") }
                }
            case "path":
                pathNode = v
                if let s = r.string(v, "path") {
                    do { path = try PathTemplate(s) } catch { r.problem(v, error.description) }
                }
            case "shape":
                if let s = r.string(v, "shape") {
                    if let sh = Route.Shape(rawValue: s) {
                        shape = sh
                    } else {
                        r.problem(v, "unknown shape '\(s)'; this version serves: \(Route.Shape.allCases.map(\.rawValue).joined(separator: ", "))")
                    }
                }
            case "exchange":
                if let e = Self.exchange(v, r, topology) { exchange = e }
            case "routing_key":
                routingKeyNode = v
                if let s = r.string(v, "routing_key") {
                    if s.isEmpty || s.utf8.count > 255 {
                        r.problem(v, "routing_key must be 1 to 255 bytes")
                    } else {
                        do { routingKey = try KeyTemplate(s) } catch { r.problem(v, error.description) }
                    }
                }
            case "queue":
                queueNode = v
                if let s = r.string(v, "queue") {
                    do { queue = try KeyTemplate(s) } catch { r.problem(v, error.description) }
                }
            case "timeout":
                if let t = timeout(v, r) { timeoutMs = t }
            case "max_body":
                if let b = Self.maxBody(v, r) { maxBody = b }
            case "forward_headers":
                if let h = headers(v, r) { forward = h }
            default: continue
            }
        }
        if method == nil && !pairs.contains(where: { $0.key == "method" }) { r.problem(node, "route has no 'method'") }
        if path == nil && pathNode == nil { r.problem(node, "route has no 'path'") }
        if routingKey == nil && routingKeyNode == nil { r.problem(node, "route has no 'routing_key'") }
        if let path, let routingKey {
            let known = Set(path.parameterNames)
            for p in routingKey.parameterNames where !known.contains(p) {
                r.problem(routingKeyNode, "routing_key uses {\(p)}, which is not a parameter of path \(path)")
            }
            for p in queue?.parameterNames ?? [] where !known.contains(p) {
                r.problem(queueNode, "queue uses {\(p)}, which is not a parameter of path \(path)")
            }
        }
        // Without a queue to watch, "no consumer" is only noticed at the deadline; say so now.
        if queue == nil, let routingKey, routingKey.isConstant, let exchangeSpec = topology.exchanges.first(where: { $0.name == exchange }) ?? (exchange.isEmpty ? ExchangeSpec(name: "", type: "direct") : nil) {
            let queues = topology.queues(forExchange: exchange, routingKey: routingKey.description)
            if queues.count == 1, let only = queues.first {
                queue = try? KeyTemplate(only)
            } else if queues.isEmpty && exchangeSpec.type == "direct" && !exchange.isEmpty {
                r.problem(routingKeyNode, "no queue in the topology is bound to exchange '\(exchange)' with routing key '\(routingKey)'")
            }
        }
        guard r.problems.count == before, let method, let path, let routingKey else { return nil }
        return Route(
            name: name ?? "\(method) \(path)",
            method: method,
            path: path,
            shape: shape,
            exchange: exchange,
            routingKey: routingKey,
            queue: queue,
            timeoutMilliseconds: timeoutMs,
            forwardHeaders: forward,
            maxBodyBytes: maxBody,
            line: line
        )
    }

    private static func exchange(_ v: Node, _ r: NodeReader, _ topology: Topology) -> String? {
        guard let s = r.string(v, "exchange") else { return nil }
        if s.isEmpty || s.hasPrefix("amq.") || topology.exchanges.contains(where: { $0.name == s }) { return s }
        r.problem(v, "exchange '\(s)' is not declared in the topology file")
        return nil
    }

    private static func timeout(_ v: Node, _ r: NodeReader) -> Int? {
        guard let s = r.string(v, "timeout") else { return nil }
        guard let ms = Quantities.milliseconds(s), ms > 0, ms <= maximumTimeoutMilliseconds else {
            r.problem(v, "timeout '\(s)' must be a duration like 500ms, 5s or 2m, above 0 and at most 10m")
            return nil
        }
        return ms
    }

    private static func maxBody(_ v: Node, _ r: NodeReader) -> Int? {
        guard let s = r.string(v, "max_body") else { return nil }
        guard let b = Quantities.bytes(s), b <= 64 << 20 else {
            r.problem(v, "max_body '\(s)' must be a size like 512KiB or 1MiB, at most 64MiB")
            return nil
        }
        return b
    }

    private static func headers(_ v: Node, _ r: NodeReader) -> Set<String>? {
        guard let items = r.sequence(v, "forward_headers") else { return nil }
        var out: Set<String> = []
        for item in items {
            guard let s = r.string(item, "a header name") else { continue }
            let token = s.lowercased()
            if token.isEmpty || !token.unicodeScalars.allSatisfy(isTokenCharacter) {
                r.problem(item, "'\(s)' is not a valid HTTP header name")
                continue
            }
            out.insert(token)
        }
        return out
    }

    /// Whether `c` may appear in an HTTP header name (RFC 9110 token).
    public static func isTokenCharacter(_ c: Unicode.Scalar) -> Bool {
        c.isASCII && (c.isASCIILetter || ("0"..."9").contains(c) || "!#$%&'*+-.^_`|~".unicodeScalars.contains(c))
    }
}
