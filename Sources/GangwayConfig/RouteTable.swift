/// The immutable set of routes, matched by method and path.
///
/// A trie of path segments: literal children are tried before a parameter child, so
/// `/v1/users/me` wins over `/v1/users/{id}`. Matching allocates only the parameter map, and
/// only for a route with parameters.
public struct RouteTable: Sendable {
    public enum Match: Sendable {
        case matched(Route, parameters: [String: String])
        /// The path exists but not for this method; the methods that would work.
        case methodNotAllowed(allowed: [String])
        case notFound
        /// A parameter value that cannot go into a routing key.
        case badParameter(name: String, reason: String)
    }

    final class Node: @unchecked Sendable {
        // Built once in `init` and never mutated after; shared read-only across threads.
        var literals: [String: Node] = [:]
        var parameter: (name: String, node: Node)?
        var routes: [String: Route] = [:]
    }

    private let root = Node()
    public let routes: [Route]

    /// - Precondition: no two routes share method and path (validation ensures it).
    public init(routes: [Route]) {
        self.routes = routes
        for route in routes {
            var node = root
            for segment in route.path.segments {
                switch segment {
                case .literal(let s):
                    if let next = node.literals[s] {
                        node = next
                    } else {
                        let next = Node()
                        node.literals[s] = next
                        node = next
                    }
                case .parameter(let name):
                    if let p = node.parameter {
                        node = p.node
                    } else {
                        let next = Node()
                        node.parameter = (name, next)
                        node = next
                    }
                }
            }
            node.routes[route.method] = route
        }
    }

    /// Matches a request path (without query). Parameter values are percent-decoded.
    ///
    /// The path's segments are what follows its first `/`, split at every `/` byte (`/` is one
    /// byte in UTF-8 and never part of another character's bytes); a path without `/` has none.
    public func match(method: String, path: String) -> Match {
        var values: [(String, Substring)] = []
        let segments = path.utf8.firstIndex(of: UInt8(ascii: "/")).map { path[path.utf8.index(after: $0)...] }
        guard let node = find(root, segments, &values) else { return .notFound }
        if let route = node.routes[method] ?? (method == "HEAD" ? node.routes["GET"] : nil) {
            guard !values.isEmpty else { return .matched(route, parameters: [:]) }
            var parameters: [String: String] = [:]
            let keyParameters = route.keyParameterNames
            for (name, raw) in values {
                guard let decoded = Self.percentDecode(raw) else {
                    return .badParameter(name: name, reason: "bad percent-encoding")
                }
                if keyParameters.contains(name), !Self.isRoutingSafe(decoded) {
                    return .badParameter(name: name, reason: "must be 1 to 200 bytes without '.', '*' or '#'")
                }
                parameters[name] = decoded
            }
            return .matched(route, parameters: parameters)
        }
        if node.routes.isEmpty { return .notFound }
        var allowed = Array(node.routes.keys)
        if node.routes["GET"] != nil && node.routes["HEAD"] == nil { allowed.append("HEAD") }
        return .methodNotAllowed(allowed: allowed.sorted())
    }

    /// The node `segments` (`a/b/c`; nil for none left) lead to from `node`.
    private func find(_ node: Node, _ segments: Substring?, _ values: inout [(String, Substring)]) -> Node? {
        guard let segments else { return node.routes.isEmpty ? nil : node }
        let segment: Substring
        let rest: Substring?
        if let slash = segments.utf8.firstIndex(of: UInt8(ascii: "/")) {
            segment = segments[..<slash]
            rest = segments[segments.utf8.index(after: slash)...]
        } else {
            segment = segments
            rest = nil
        }
        if let literal = node.literals[String(segment)], let found = find(literal, rest, &values) {
            return found
        }
        if let parameter = node.parameter, !segment.isEmpty {
            values.append((parameter.name, segment))
            if let found = find(parameter.node, rest, &values) { return found }
            values.removeLast()
        }
        return nil
    }

    /// Whether a value can be put into a routing key without changing how it routes.
    public static func isRoutingSafe(_ value: String) -> Bool {
        !value.isEmpty && value.utf8.count <= 200 && !value.contains(where: { $0 == "." || $0 == "*" || $0 == "#" })
    }

    static func percentDecode(_ s: Substring) -> String? {
        guard s.contains("%") else { return String(s) }
        var bytes: [UInt8] = []
        var it = s.utf8.makeIterator()
        while let c = it.next() {
            if c == UInt8(ascii: "%") {
                guard let h = it.next(), let l = it.next(), let hv = hex(h), let lv = hex(l) else { return nil }
                bytes.append(hv << 4 | lv)
            } else {
                bytes.append(c)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 48...57: return c - 48
        case 65...70: return c - 55
        case 97...102: return c - 87
        default: return nil
        }
    }
}
