import GangwayAMQPCore
import GangwayConfig
import Testing

@Suite("Configuration files: every mistake with its line")
struct ConfigFileTests {
    static let definitions = """
        {
          "exchanges": [
            {"name": "gangway.rpc", "vhost": "/", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
          ],
          "queues": [
            {"name": "demo.echo", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "classic", "x-message-ttl": 60000}}
          ],
          "bindings": [
            {"source": "gangway.rpc", "vhost": "/", "destination": "demo.echo", "destination_type": "queue", "routing_key": "demo.echo", "arguments": {}}
          ]
        }
        """

    /// The fixture is valid; `definitionsLoad` proves it, so a failure here shows up there.
    func topology() -> Topology {
        (try? DefinitionsFile.parse(Self.definitions, file: "definitions.json")) ?? Topology()
    }

    @Test("RabbitMQ's definitions format loads with typed arguments")
    func definitionsLoad() throws {
        let t = topology()
        #expect(t.exchanges.map(\.name) == ["gangway.rpc"])
        #expect(t.queues.first?.arguments["x-message-ttl"] == .int(60000))
        #expect(t.queues.first?.arguments["x-queue-type"] == .string("classic"))
        #expect(t.bindings.first?.routingKey == "demo.echo")
    }

    @Test("a valid routes file compiles; defaults apply; the serving queue comes from the bindings")
    func routesLoad() throws {
        let yaml = """
            version: 1
            defaults:
              timeout: 3s
              forward_headers: [Accept]
            routes:
              - name: echo
                method: post
                path: /v1/echo
                routing_key: demo.echo
                max_body: 2MiB
            """
        let table = try RoutesFile.parse(yaml, file: "routes.yaml", topology: topology())
        let r = try #require(table.routes.first)
        #expect(r.method == "POST" && r.exchange == "gangway.rpc" && r.timeoutMilliseconds == 3000)
        #expect(r.maxBodyBytes == 2 << 20 && r.forwardHeaders == ["accept"])
        #expect(r.queue?.description == "demo.echo")
        #expect(r.line == 6)
    }

    @Test("every problem in the routes file is reported with its line")
    func routeErrors() throws {
        let yaml = """
            version: 1
            routes:
              - name: a
                method: FETCH
                path: v1/a
                routing_key: demo.echo
              - name: b
                method: GET
                path: /v1/b/{id}
                routing_key: users.{user}
                timeout: forever
              - name: c
                method: GET
                path: /v1/c
                routing_key: demo.echo
                exchange: nowhere
                colour: blue
              - name: d
                method: GET
                path: /v1/d
              - name: e
                method: GET
                path: /v1/d
                routing_key: demo.echo
              - name: e2
                method: GET
                path: /v1/d
                routing_key: demo.echo
                max_body: huge
                forward_headers: ["bad header"]
            """
        do {
            _ = try RoutesFile.parse(yaml, file: "routes.yaml", topology: topology())
            Issue.record("expected errors")
        } catch {
            let lines = error.problems.map(\.line)
            let text = error.description
            #expect(text.contains("routes.yaml:4:"), "unknown method at line 4")
            #expect(text.contains("unknown HTTP method 'FETCH'"))
            #expect(text.contains("routes.yaml:5:") && text.contains("must start with '/'"))
            #expect(text.contains("routes.yaml:10:") && text.contains("{user}"))
            #expect(text.contains("routes.yaml:11:") && text.contains("timeout 'forever'"))
            #expect(text.contains("routes.yaml:16:") && text.contains("exchange 'nowhere' is not declared"))
            #expect(text.contains("routes.yaml:17:") && text.contains("unknown key 'colour'"))
            #expect(text.contains("routes.yaml:18:") && text.contains("no 'routing_key'"))
            #expect(text.contains("routes.yaml:29:") && text.contains("max_body 'huge'"))
            #expect(text.contains("routes.yaml:30:") && text.contains("not a valid HTTP header name"))
            #expect(!lines.contains(0))
        }
    }

    @Test("two routes with the same method and path are refused, naming the first")
    func duplicates() throws {
        let yaml = """
            version: 1
            routes:
              - {method: GET, path: "/v1/u/{id}", routing_key: demo.echo}
              - {method: GET, path: "/v1/u/{name}", routing_key: demo.echo}
            """
        do {
            _ = try RoutesFile.parse(yaml, file: "routes.yaml", topology: topology())
            Issue.record("expected a duplicate error")
        } catch {
            #expect(error.description.contains("routes.yaml:4:"))
            #expect(error.description.contains("duplicates the route at line 3"))
        }
    }

    @Test("a routing key no queue is bound to is refused on a direct exchange")
    func unboundKey() throws {
        let yaml = """
            version: 1
            routes:
              - {method: GET, path: /v1/x, routing_key: nobody.listens}
            """
        #expect(throws: ConfigurationError.self) { try RoutesFile.parse(yaml, file: "routes.yaml", topology: topology()) }
    }

    @Test("YAML syntax errors carry the parser's position")
    func syntax() {
        do {
            _ = try RoutesFile.parse("version: 1\nroutes:\n  - method: [GET\n", file: "routes.yaml", topology: Topology())
            Issue.record("expected a syntax error")
        } catch {
            #expect(error.problems.first?.line ?? 0 > 0)
            #expect(error.description.contains("syntax error"))
        }
    }

    @Test("missing version and routes are reported")
    func missingTop() {
        do {
            _ = try RoutesFile.parse("defaults: {}\n", file: "routes.yaml", topology: Topology())
            Issue.record("expected errors")
        } catch {
            #expect(error.description.contains("missing 'version: 1'"))
            #expect(error.description.contains("missing 'routes:' list"))
        }
    }

    @Test("definitions problems carry lines: unknown type, dangling binding, reserved name")
    func definitionErrors() {
        let json = """
            {
              "exchanges": [
                {"name": "e", "type": "direkt"},
                {"name": "amq.topic", "type": "topic"}
              ],
              "queues": [
                {"name": "q", "arguments": {"x-queue-type": "fast"}}
              ],
              "bindings": [
                {"source": "e", "destination": "missing", "destination_type": "queue", "routing_key": "k"}
              ]
            }
            """
        do {
            _ = try DefinitionsFile.parse(json, file: "definitions.json")
            Issue.record("expected errors")
        } catch {
            let text = error.description
            #expect(text.contains("definitions.json:3:") && text.contains("unknown exchange type 'direkt'"))
            #expect(text.contains("definitions.json:4:") && text.contains("reserved"))
            #expect(text.contains("definitions.json:7:") && text.contains("x-queue-type"))
            #expect(text.contains("definitions.json:10:") && text.contains("'missing' is not defined"))
        }
    }

    @Test("invalid JSON is reported with a position")
    func badJSON() {
        do {
            _ = try DefinitionsFile.parse("{\n  \"queues\": [\n    {\"name\": \"q\",,}\n  ]\n}", file: "definitions.json")
            Issue.record("expected a syntax error")
        } catch {
            #expect(error.problems.first?.line == 3)
        }
    }

    @Test("a missing file is a clear error")
    func missingFile() {
        do {
            _ = try GangwayConfiguration.load(routesPath: "/nonexistent/routes.yaml", topologyPath: "/nonexistent/definitions.json")
            Issue.record("expected errors")
        } catch {
            #expect(error.problems.count == 2)
            #expect(error.description.contains("cannot read the file"))
        }
    }
}

@Suite("Aggregate routes in routes.yaml")
struct AggregateConfigTests {
    let topology = Topology(
        exchanges: [ExchangeSpec(name: "gangway.rpc", type: "direct")],
        queues: [QueueSpec(name: "a"), QueueSpec(name: "b")],
        bindings: [BindingSpec(source: "gangway.rpc", destination: "a", routingKey: "a"), BindingSpec(source: "gangway.rpc", destination: "b", routingKey: "b")]
    )

    @Test("legs compile to request/reply routes with inherited defaults, queues and chained references")
    func compiles() throws {
        let yaml = """
            version: 1
            routes:
              - name: dash
                method: GET
                path: /v1/dash/{id}
                shape: aggregate
                policy: partial
                timeout: 2s
                legs:
                  - key: a
                    routing_key: a
                    keep_headers: [etag]
                  - key: b
                    routing_key: b
                    timeout: 500ms
                    body: none
                    accept_status: [404]
                    use: {user: /a/owner/id}
            """
        let table = try RoutesFile.parse(yaml, file: "routes.yaml", topology: topology)
        let spec = try #require(table.routes.first?.aggregate)
        #expect(spec.policy == .partial)
        #expect(spec.legs.map(\.key) == ["a", "b"])
        #expect(spec.legs[0].route.timeoutMilliseconds == 2000 && spec.legs[0].route.queue?.description == "a")
        #expect(spec.legs[0].keepHeaders == ["etag"])
        #expect(spec.legs[1].route.timeoutMilliseconds == 500 && !spec.legs[1].forwardBody)
        #expect(spec.legs[1].acceptedStatuses == [404])
        #expect(spec.legs[1].uses["user"] == AggregateSpec.Reference("/a/owner/id"))
        #expect(spec.legs[1].uses["user"]?.pointer == ["owner", "id"])
        #expect(spec.legs[1].route.name == "dash.b")
    }

    @Test("aggregate mistakes are reported with lines")
    func mistakes() {
        let yaml = """
            version: 1
            routes:
              - method: GET
                path: /v1/x
                shape: aggregate
                policy: most
                routing_key: a
                timeout: 1s
                legs:
                  - key: a
                    routing_key: a
                  - key: a
                    routing_key: b
                  - key: c
                    routing_key: c.{nope}
                    timeout: 5s
                    use: {v: /later/x}
                  - routing_key: b
                    body: some
            """
        do {
            _ = try RoutesFile.parse(yaml, file: "r.yaml", topology: topology)
            Issue.record("expected errors")
        } catch {
            let t = error.description
            #expect(t.contains("r.yaml:6:") && t.contains("policy must be 'all' or 'partial'"))
            #expect(t.contains("r.yaml:7:") && t.contains("no routing_key of its own"))
            #expect(t.contains("r.yaml:12:") && t.contains("leg key 'a' is used twice"))
            #expect(t.contains("r.yaml:15:") && t.contains("{nope}"))
            #expect(t.contains("r.yaml:16:") && t.contains("cannot exceed"))
            #expect(t.contains("r.yaml:17:") && t.contains("'later' is not a leg listed before"))
            #expect(t.contains("r.yaml:18:") && t.contains("leg has no 'key'"))
            #expect(t.contains("r.yaml:19:") && t.contains("body must be 'forward' or 'none'"))
        }
    }

    @Test("policy and legs on a request-reply route are refused")
    func misplaced() {
        let yaml = """
            version: 1
            routes:
              - {method: GET, path: /v1/x, routing_key: a, policy: all}
            """
        #expect(throws: ConfigurationError.self) { try RoutesFile.parse(yaml, file: "r.yaml", topology: topology) }
    }
}

@Suite("Gather and stream routes in routes.yaml")
struct GatherStreamConfigTests {
    let topology = Topology(
        exchanges: [ExchangeSpec(name: "fan", type: "topic"), ExchangeSpec(name: "gangway.rpc", type: "direct")],
        queues: [QueueSpec(name: "s")],
        bindings: [BindingSpec(source: "gangway.rpc", destination: "s", routingKey: "s")]
    )

    @Test("gather takes expect and first and watches no single queue; stream takes idle_timeout")
    func compiles() throws {
        let yaml = """
            version: 1
            routes:
              - {name: g, method: POST, path: /g, shape: gather, exchange: fan, routing_key: all, expect: 3, first: 2}
              - {name: s, method: POST, path: /s, shape: stream, exchange: gangway.rpc, routing_key: s, timeout: 30s, idle_timeout: 2s}
            """
        let routes = try RoutesFile.parse(yaml, file: "r.yaml", topology: topology).routes
        #expect(routes[0].gather == Route.GatherSpec(expect: 3, first: 2))
        #expect(routes[0].gather?.enough == 2)
        #expect(routes[0].queue == nil)
        #expect(routes[1].idleTimeoutMilliseconds == 2000 && routes[1].timeoutMilliseconds == 30000)
        #expect(routes[1].queue?.description == "s")
    }

    @Test("misplaced or out-of-range gather and stream settings are refused with lines")
    func mistakes() {
        let yaml = """
            version: 1
            routes:
              - {method: POST, path: /g, shape: gather, exchange: fan, routing_key: all, expect: 0}
              - {method: POST, path: /s, shape: stream, exchange: gangway.rpc, routing_key: s, timeout: 1s, idle_timeout: 2s}
              - {method: POST, path: /r, exchange: gangway.rpc, routing_key: s, first: 1, idle_timeout: 1s}
            """
        do {
            _ = try RoutesFile.parse(yaml, file: "r.yaml", topology: topology)
            Issue.record("expected errors")
        } catch {
            let t = error.description
            #expect(t.contains("r.yaml:3:") && t.contains("expect must be a whole number"))
            #expect(t.contains("r.yaml:4:") && t.contains("idle_timeout cannot exceed"))
            #expect(t.contains("r.yaml:5:") && t.contains("apply to gather routes only"))
            #expect(t.contains("r.yaml:5:") && t.contains("applies to stream routes only"))
        }
    }
}
