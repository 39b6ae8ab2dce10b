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
        "policy", "legs", "idle_timeout", "expect", "first", "result_redirect",
    ]
    private static let legKeys: Set<String> = [
        "key", "exchange", "routing_key", "queue", "timeout", "forward_headers", "body", "accept_status", "keep_headers", "use",
        "body_template", "body_content_type",
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
        var policyNode: Node?
        var legsNode: Node?
        var idleNode: Node?
        var idleMs: Int?
        var gatherNodes: [Node] = []
        var gather = Route.GatherSpec()
        var resultRedirect = false
        var resultRedirectNode: Node?
        for (k, _, v) in pairs {
            switch k {
            case "result_redirect":
                resultRedirectNode = v
                resultRedirect = r.bool(v, "result_redirect") ?? false
            case "expect", "first":
                gatherNodes.append(v)
                if let text = r.string(v, k), let n = Int(text), (1...10_000).contains(n) {
                    if k == "expect" { gather.expect = n } else { gather.first = n }
                } else {
                    r.problem(v, "\(k) must be a whole number from 1 to 10000")
                }
            case "idle_timeout":
                idleNode = v
                idleMs = timeout(v, r)
            case "policy": policyNode = v
            case "legs": legsNode = v
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
        var aggregate: AggregateSpec?
        if shape == .aggregate {
            if let routingKeyNode { r.problem(routingKeyNode, "an aggregate route has no routing_key of its own; give each leg one") }
            routingKey = try? KeyTemplate("")
            aggregate = readAggregate(
                node: node, policyNode: policyNode, legsNode: legsNode, r: r, topology: topology,
                parent: (name ?? "\(method ?? "") \(path?.description ?? "")", path, exchange, timeoutMs, forward)
            )
        } else {
            if let policyNode { r.problem(policyNode, "'policy' applies to aggregate routes only") }
            if let legsNode { r.problem(legsNode, "'legs' applies to aggregate routes only") }
            if routingKey == nil && routingKeyNode == nil { r.problem(node, "route has no 'routing_key'") }
            if let path, let routingKey {
                checkParameters(routingKey, "routing_key", known: Set(path.parameterNames), path: path, node: routingKeyNode, r)
                if let queue { checkParameters(queue, "queue", known: Set(path.parameterNames), path: path, node: queueNode, r) }
            }
            if shape == .gather {
                // Many queues answer a gather; none of them alone says whether it can be served.
                queue = nil
                if exchange.isEmpty { r.problem(node, "a gather route needs an exchange that fans out (topic, fanout or headers)") }
            } else if queue == nil, let routingKey {
                queue = servingQueue(exchange: exchange, routingKey: routingKey, topology: topology, node: routingKeyNode, r)
            }
        }
        if shape != .job, let resultRedirectNode {
            r.problem(resultRedirectNode, "'result_redirect' applies to job routes only")
        }
        if shape != .gather, let first = gatherNodes.first {
            r.problem(first, "'expect' and 'first' apply to gather routes only")
        }
        if shape == .stream {
            if let idleMs, idleMs > timeoutMs { r.problem(idleNode, "idle_timeout cannot exceed the route's timeout (\(timeoutMs) ms)") }
        } else if let idleNode {
            r.problem(idleNode, "'idle_timeout' applies to stream routes only")
        }
        guard r.problems.count == before, let method, let path, let routingKey else { return nil }
        var route = Route(
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
            line: line,
            aggregate: aggregate,
            idleTimeoutMilliseconds: idleMs ?? min(10_000, timeoutMs),
            gather: shape == .gather ? gather : nil
        )
        route.resultRedirect = resultRedirect
        return route
    }

    private static func checkParameters(_ key: KeyTemplate, _ what: String, known: Set<String>, path: PathTemplate, node: Node?, _ r: NodeReader) {
        for p in key.parameterNames where !known.contains(p) {
            r.problem(node, "\(what) uses {\(p)}, which is not a parameter of path \(path)")
        }
    }

    /// The one queue a constant routing key lands in, for the fast "no consumer" 503. Without
    /// a queue to watch, "no consumer" is only noticed at the deadline; a direct exchange with
    /// nothing bound for the key is a mistake worth reporting now.
    private static func servingQueue(exchange: String, routingKey: KeyTemplate, topology: Topology, node: Node?, _ r: NodeReader) -> KeyTemplate? {
        guard routingKey.isConstant else { return nil }
        guard let spec = topology.exchanges.first(where: { $0.name == exchange }) ?? (exchange.isEmpty ? ExchangeSpec(name: "", type: "direct") : nil) else {
            return nil
        }
        let queues = topology.queues(forExchange: exchange, routingKey: routingKey.description)
        if queues.count == 1, let only = queues.first {
            return try? KeyTemplate(only)
        }
        if queues.isEmpty && spec.type == "direct" && !exchange.isEmpty {
            r.problem(node, "no queue in the topology is bound to exchange '\(exchange)' with routing key '\(routingKey)'")
        }
        return nil
    }

    private static func readAggregate(
        node: Node,
        policyNode: Node?,
        legsNode: Node?,
        r: NodeReader,
        topology: Topology,
        parent: (name: String, path: PathTemplate?, exchange: String, timeoutMs: Int, forward: Set<String>)
    ) -> AggregateSpec? {
        var policy = AggregateSpec.Policy.all
        if let policyNode, let s = r.string(policyNode, "policy") {
            if let p = AggregateSpec.Policy(rawValue: s) { policy = p } else { r.problem(policyNode, "policy must be 'all' or 'partial', not '\(s)'") }
        }
        guard let legsNode else {
            r.problem(node, "an aggregate route needs 'legs'")
            return nil
        }
        guard let items = r.sequence(legsNode, "legs") else { return nil }
        if items.isEmpty { r.problem(legsNode, "an aggregate route needs at least one leg") }
        var legs: [AggregateSpec.Leg] = []
        var keys: Set<String> = []
        for item in items {
            guard let leg = readLeg(item, r, topology, parent: parent, earlier: keys) else { continue }
            if !keys.insert(leg.key).inserted {
                r.problem(item, "leg key '\(leg.key)' is used twice")
                continue
            }
            legs.append(leg)
        }
        return AggregateSpec(legs: legs, policy: policy)
    }

    private static func readLeg(
        _ node: Node,
        _ r: NodeReader,
        _ topology: Topology,
        parent: (name: String, path: PathTemplate?, exchange: String, timeoutMs: Int, forward: Set<String>),
        earlier: Set<String>
    ) -> AggregateSpec.Leg? {
        guard let pairs = r.mapping(node, "a leg", allowed: legKeys) else { return nil }
        let before = r.problems.count
        var key: String?
        var exchange = parent.exchange
        var routingKey: KeyTemplate?
        var routingKeyNode: Node?
        var queue: KeyTemplate?
        var timeoutMs = parent.timeoutMs
        var forward = parent.forward
        var forwardBody = true
        var accepted: Set<Int> = []
        var keep: Set<String> = []
        var uses: [String: AggregateSpec.Reference] = [:]
        var bodyTemplate: KeyTemplate?
        var bodyTemplateNode: Node?
        var bodyContentType = "application/json"
        var bodyNode: Node?
        for (k, _, v) in pairs {
            switch k {
            case "key":
                if let s = r.string(v, "leg key") {
                    if PathTemplate.isIdentifier(s) { key = s } else { r.problem(v, "leg key '\(s)' must be letters, digits and '_'") }
                }
            case "exchange":
                if let e = Self.exchange(v, r, topology) { exchange = e }
            case "routing_key":
                routingKeyNode = v
                if let s = r.string(v, "routing_key") {
                    if s.isEmpty { r.problem(v, "routing_key must not be empty") } else {
                        do { routingKey = try KeyTemplate(s) } catch { r.problem(v, error.description) }
                    }
                }
            case "queue":
                if let s = r.string(v, "queue") {
                    do { queue = try KeyTemplate(s) } catch { r.problem(v, error.description) }
                }
            case "timeout":
                if let t = timeout(v, r) {
                    if t > parent.timeoutMs { r.problem(v, "a leg's timeout cannot exceed its route's (\(parent.timeoutMs) ms)") } else { timeoutMs = t }
                }
            case "forward_headers":
                if let h = headers(v, r) { forward = h }
            case "keep_headers":
                if let h = headers(v, r) { keep = h }
            case "body_template":
                bodyTemplateNode = v
                if let text = r.string(v, "body_template") {
                    do { bodyTemplate = try KeyTemplate(text, opener: "${") } catch { r.problem(v, error.description) }
                }
            case "body_content_type":
                if let text = r.string(v, "body_content_type") {
                    if text.isEmpty || !WireContract.isSingleLine(text) { r.problem(v, "body_content_type must be a media type") } else { bodyContentType = text }
                }
            case "body":
                bodyNode = v
                switch r.string(v, "body") {
                case "forward": forwardBody = true
                case "none": forwardBody = false
                case let other?: r.problem(v, "body must be 'forward' or 'none', not '\(other)'")
                case nil: break
                }
            case "accept_status":
                for item in r.sequence(v, "accept_status") ?? [] {
                    if let s = r.string(item, "a status"), let code = Int(s), (400...599).contains(code) {
                        accepted.insert(code)
                    } else {
                        r.problem(item, "accept_status takes HTTP statuses 400...599")
                    }
                }
            case "use":
                for (name, _, value) in r.mapping(v, "use") ?? [] {
                    guard PathTemplate.isIdentifier(name) else {
                        r.problem(v, "'\(name)' is not a parameter name")
                        continue
                    }
                    guard let text = r.string(value, "a JSON pointer"), let ref = AggregateSpec.Reference(text) else {
                        r.problem(value, "use takes a pointer like /<leg key>/field/0")
                        continue
                    }
                    if !earlier.contains(ref.leg) {
                        r.problem(value, "'\(ref.leg)' is not a leg listed before this one")
                        continue
                    }
                    uses[name] = ref
                }
            default: continue
            }
        }
        if key == nil && !pairs.contains(where: { $0.key == "key" }) { r.problem(node, "leg has no 'key'") }
        if routingKey == nil && routingKeyNode == nil { r.problem(node, "leg has no 'routing_key'") }
        if let routingKey, let path = parent.path {
            let known = Set(path.parameterNames).union(uses.keys)
            for p in routingKey.parameterNames where !known.contains(p) {
                r.problem(routingKeyNode, "routing_key uses {\(p)}, which is neither a path parameter nor named in 'use'")
            }
        }
        if let bodyTemplate, let path = parent.path {
            if bodyNode != nil { r.problem(bodyNode, "a leg takes 'body' or 'body_template', not both") }
            let known = Set(path.parameterNames).union(uses.keys)
            for p in bodyTemplate.parameterNames where !known.contains(p) {
                r.problem(bodyTemplateNode, "body_template uses {\(p)}, which is neither a path parameter nor named in 'use'")
            }
        }
        if queue == nil, let routingKey {
            queue = servingQueue(exchange: exchange, routingKey: routingKey, topology: topology, node: routingKeyNode, r)
        }
        guard r.problems.count == before, let key, let routingKey, let path = parent.path else { return nil }
        let route = Route(
            name: "\(parent.name).\(key)",
            method: "",
            path: path,
            exchange: exchange,
            routingKey: routingKey,
            queue: queue,
            timeoutMilliseconds: timeoutMs,
            forwardHeaders: forward,
            maxBodyBytes: 0
        )
        return AggregateSpec.Leg(
            key: key, route: route, forwardBody: forwardBody, bodyTemplate: bodyTemplate, bodyContentType: bodyContentType,
            acceptedStatuses: accepted, keepHeaders: keep, uses: uses
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
        c.isASCII && isTokenByte(UInt8(c.value))
    }

    /// ``isTokenCharacter(_:)`` for one byte of UTF-8 text: no byte of a multi-byte character
    /// is a token character, so a name is a token exactly when all its bytes are.
    @inlinable
    public static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
            UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
            UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }
}
