import GangwayAMQPCore
import GangwayConfig
import Testing

extension String {
    fileprivate func replacingOccurrences(_ a: String, _ b: String) -> String {
        split(separator: a, omittingEmptySubsequences: false).joined(separator: b)
    }
}

@Suite("Route matching and templates")
struct RouteTableTests {
    func route(_ method: String, _ path: String, key: String = "k", name: String? = nil) throws -> Route {
        Route(
            name: name ?? "\(method) \(path)",
            method: method,
            path: try PathTemplate(path),
            exchange: "x",
            routingKey: try KeyTemplate(key),
            timeoutMilliseconds: 1000,
            maxBodyBytes: 100
        )
    }

    @Test("a literal path matches only itself")
    func literal() throws {
        let t = RouteTable(routes: [try route("POST", "/v1/echo")])
        guard case .matched(let r, let p) = t.match(method: "POST", path: "/v1/echo") else {
            Issue.record("no match")
            return
        }
        #expect(r.path.description == "/v1/echo" && p.isEmpty)
        #expect(isNotFound(t.match(method: "POST", path: "/v1/echo/x")))
        #expect(isNotFound(t.match(method: "POST", path: "/v1")))
        #expect(isNotFound(t.match(method: "POST", path: "/v1/echo/")))
    }

    @Test("parameters capture one whole segment, percent-decoded")
    func parameters() throws {
        let t = RouteTable(routes: [try route("GET", "/v1/users/{id}/orders/{order}", key: "users.get")])
        guard case .matched(_, let p) = t.match(method: "GET", path: "/v1/users/al%20ice/orders/42") else {
            Issue.record("no match")
            return
        }
        #expect(p == ["id": "al ice", "order": "42"])
        #expect(isNotFound(t.match(method: "GET", path: "/v1/users//orders/42")))
    }

    @Test("literal segments win over parameters, and matching backtracks")
    func precedence() throws {
        let t = RouteTable(routes: [
            try route("GET", "/v1/users/me", name: "me"),
            try route("GET", "/v1/users/{id}", name: "user"),
            try route("GET", "/v1/users/me/settings/{k}", name: "settings"),
            try route("GET", "/v1/users/{id}/profile", name: "profile"),
        ])
        #expect(name(t.match(method: "GET", path: "/v1/users/me")) == "me")
        #expect(name(t.match(method: "GET", path: "/v1/users/bob")) == "user")
        #expect(name(t.match(method: "GET", path: "/v1/users/me/profile")) == "profile")
        #expect(name(t.match(method: "GET", path: "/v1/users/me/settings/x")) == "settings")
    }

    @Test("a known path with another method is 405 with the allowed methods, HEAD follows GET")
    func methodNotAllowed() throws {
        let t = RouteTable(routes: [try route("GET", "/v1/time"), try route("PUT", "/v1/time")])
        guard case .methodNotAllowed(let allowed) = t.match(method: "DELETE", path: "/v1/time") else {
            Issue.record("expected 405")
            return
        }
        #expect(allowed == ["GET", "HEAD", "PUT"])
        #expect(name(t.match(method: "HEAD", path: "/v1/time")) == "GET /v1/time")
    }

    @Test("values that would change a routing key are refused", arguments: ["a.b", "a*", "%23", "%zz"])
    func badParameters(_ value: String) throws {
        let t = RouteTable(routes: [try route("GET", "/v1/users/{id}", key: "users.{id}")])
        guard case .badParameter(let n, _) = t.match(method: "GET", path: "/v1/users/\(value)") else {
            Issue.record("expected a bad parameter for \(value)")
            return
        }
        #expect(n == "id")
    }

    @Test("key templates render parameters in place")
    func keyTemplate() throws {
        let k = try KeyTemplate("users.{id}.orders.{order}")
        #expect(k.parameterNames == ["id", "order"])
        #expect(k.render(["id": "7", "order": "9"]) == "users.7.orders.9")
        #expect(try KeyTemplate("plain").render([:]) == "plain")
        #expect(try KeyTemplate("plain").isConstant)
    }

    @Test("malformed templates are refused with a reason", arguments: ["v1/x", "/v1//x", "/v1/x/", "/v1/{id", "/v1/a{id}", "/v1/{1d}", "/v1/{id}/{id}", "/v1/{}"])
    func badTemplates(_ text: String) {
        #expect(throws: PathTemplate.ParseError.self) { try PathTemplate(text) }
    }

    @Test("body templates take ${name} and leave JSON braces alone")
    func bodyTemplate() throws {
        let t = try KeyTemplate(#"{"a": "${x}", "b": {"c": "${y}"}}"#, opener: "${")
        #expect(t.parameterNames == ["x", "y"])
        #expect(t.render(["x": #"q"uote"#, "y": "2"], escape: { $0.replacingOccurrences("\"", "\\\"") }) == #"{"a": "q\"uote", "b": {"c": "2"}}"#)
        #expect(throws: PathTemplate.ParseError.self) { try KeyTemplate("${open", opener: "${") }
    }

    @Test("malformed key templates are refused", arguments: ["a.{id", "a.id}", "a.{9}"])
    func badKeys(_ text: String) {
        #expect(throws: PathTemplate.ParseError.self) { try KeyTemplate(text) }
    }

    private func isNotFound(_ m: RouteTable.Match) -> Bool {
        if case .notFound = m { return true }
        return false
    }

    private func name(_ m: RouteTable.Match) -> String? {
        if case .matched(let r, _) = m { return r.name }
        return nil
    }
}
