import GangwayAMQPCore
import GangwayConfig
import GangwayCore
import NIOCore
import Synchronization
import Testing

/// A bus that records publishes and answers like a scripted broker: no IO.
final class ScriptedBus: MessageBus {
    let replyQueue = "gangway.reply.test"
    let isReady = true
    let outcome: PublishOutcome
    let consumers: UInt32?
    let published = Mutex<[OutboundMessage]>([])
    let onPublish: @Sendable (OutboundMessage) -> Void

    init(outcome: PublishOutcome = .confirmed, consumers: UInt32? = 1, onPublish: @escaping @Sendable (OutboundMessage) -> Void = { _ in }) {
        self.outcome = outcome
        self.consumers = consumers
        self.onPublish = onPublish
    }

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome {
        published.withLock { $0.append(message) }
        onPublish(message)
        return outcome
    }

    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {
        published.withLock { $0.append(message) }
        // Like the broker: the confirm (or return) comes before the worker's reply.
        onSettled(.success(outcome))
        onPublish(message)
    }

    func consumerCount(queue: String) async throws -> UInt32? { consumers }
}

@Suite("Request/reply over a scripted bus")
struct RequestReplyTests {
    func request(timeout: Int = 1000) throws -> GatewayRequest {
        let route = Route(
            name: "echo",
            method: "POST",
            path: try PathTemplate("/v1/echo/{id}"),
            exchange: "gangway.rpc",
            routingKey: try KeyTemplate("demo.{id}"),
            queue: try KeyTemplate("demo.{id}"),
            timeoutMilliseconds: timeout,
            forwardHeaders: ["x-demo"],
            maxBodyBytes: 1000
        )
        return GatewayRequest(
            route: route,
            parameters: ["id": "echo"],
            method: "POST",
            path: "/v1/echo/echo",
            query: "a=1",
            headers: [("content-type", "text/plain"), ("x-demo", "1"), ("x-secret", "no")],
            body: ByteBuffer(string: "hi"),
            requestID: "rid",
            traceparent: "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01"
        )
    }

    func reply(to message: OutboundMessage, headers: AMQPTable, body: String = "ok") -> Delivery {
        Delivery(
            consumerTag: "c", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "gangway.reply.test",
            properties: AMQPProperties(contentType: "text/plain", headers: headers, correlationID: message.properties.correlationID),
            body: ByteBuffer(string: body), generation: 1
        )
    }

    @Test("the request message carries wire contract v1 and the reply becomes the response")
    func roundTrip() async throws {
        let correlator = Correlator()
        let holder = Mutex<RequestReplyTests?>(self)
        let bus = ScriptedBus(onPublish: { message in
            let me = holder.withLock { $0 }!
            correlator.deliver(me.reply(to: message, headers: ["x-status": .int(201), "x-header-location": "/x/1", "x-header-connection": "close"]))
        })
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "edge1")
        let response = try await client.send(try request())
        #expect(response.status == 201)
        #expect(response.headers.map(\.name) == ["location"])
        #expect(String(buffer: response.body) == "ok")
        let m = try #require(bus.published.withLock { $0.first })
        #expect(m.exchange == "gangway.rpc" && m.routingKey == "demo.echo" && m.mandatory)
        #expect(m.properties.replyTo == "gangway.reply.test")
        #expect(m.properties.expiration == "1000")
        #expect(m.properties.contentType == "text/plain")
        #expect(m.properties.appID == "gangway" && m.properties.type == "echo")
        #expect(m.properties.correlationID?.hasPrefix("edge1.") == true)
        let h = m.properties.headers
        #expect(h["x-method"] == "POST" && h["x-path"] == "/v1/echo/echo" && h["x-query"] == "a=1")
        #expect(h["x-request-id"] == "rid" && h["x-route"] == "echo")
        #expect(h["x-header-x-demo"] == "1" && h["x-header-x-secret"] == nil)
        #expect(h["x-deadline"]?.intValue ?? 0 > 1_700_000_000_000)
        #expect(h["traceparent"] == "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01")
        #expect(String(buffer: m.body) == "hi")
    }

    @Test("send with a completion: a task asks about consumers the first time, then requests are published from the caller")
    func completion() async throws {
        let correlator = Correlator()
        let holder = Mutex<RequestReplyTests?>(self)
        let bus = ScriptedBus(onPublish: { message in
            correlator.deliver(holder.withLock { $0 }!.reply(to: message, headers: ["x-status": .int(202)]))
        })
        let presence = ConsumerPresence(bus: bus)
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: presence, instanceID: "e")
        #expect(!presence.isKnownPresent(queue: "demo.echo"))
        let first = await withCheckedContinuation { continuation in
            client.send(try! request()) { continuation.resume(returning: $0) }
        }
        #expect((try? first.get())?.status == 202)
        #expect(presence.isKnownPresent(queue: "demo.echo"))

        // Known now: published before `send` returns (this bus replies inside the publish).
        let second = Mutex<Result<GatewayReply, GatewayError>?>(nil)
        client.send(try request()) { result in second.withLock { $0 = result } }
        #expect(bus.published.withLock { $0.count } == 2)
        #expect(second.withLock { (try? $0?.get())?.status } == 202)
        #expect(correlator.pending == 0)
    }

    @Test("send with a completion reports a returned publish as 503 and frees the slot")
    func completionReturned() async throws {
        let bus = ScriptedBus(outcome: .returned(replyCode: 312, replyText: "NO_ROUTE"))
        let correlator = Correlator()
        let presence = ConsumerPresence(bus: bus)
        _ = await presence.check(queue: "demo.echo")
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: presence, instanceID: "e")
        let result = Mutex<Result<GatewayReply, GatewayError>?>(nil)
        client.send(try request()) { outcome in result.withLock { $0 = outcome } }
        let error = result.withLock { outcome -> GatewayError? in
            if case .failure(let error)? = outcome { return error }
            return nil
        }
        #expect(error?.status == 503 && error?.detail.contains("NO_ROUTE") == true)
        #expect(correlator.pending == 0)
    }

    @Test("no consumers on the route's queue is 503 without publishing")
    func noConsumer() async throws {
        let bus = ScriptedBus(consumers: 0)
        let client = RequestReplyClient(bus: bus, correlator: Correlator(), presence: ConsumerPresence(bus: bus), instanceID: "e")
        let error = await #expect(throws: GatewayError.self) { try await client.send(try request()) }
        #expect(error?.status == 503)
        #expect(bus.published.withLock { $0.isEmpty })
    }

    @Test("a returned (unroutable) publish is 503; a nack is 503")
    func returnedAndNacked() async throws {
        for outcome in [PublishOutcome.returned(replyCode: 312, replyText: "NO_ROUTE"), .nacked] {
            let bus = ScriptedBus(outcome: outcome)
            let correlator = Correlator()
            let client = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "e")
            let error = await #expect(throws: GatewayError.self) { try await client.send(try request()) }
            #expect(error?.status == 503)
            #expect(correlator.pending == 0)
            if case .returned = outcome { #expect(error?.detail.contains("NO_ROUTE") == true) }
        }
    }

    @Test("requests started together go out as one batch; each gets its own reply or failure")
    func startAll() async throws {
        let correlator = Correlator()
        let bus = AnsweringBus(correlator: correlator, answers: ["demo.echo": (200, "text/plain", "echoed")], unserved: ["demo.unserved"])
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "e")
        var unroutable = try request()
        unroutable.parameters = ["id": "nowhere"]
        var unserved = try request()
        unserved.parameters = ["id": "unserved"]
        let pendings = await client.startAll([try request(), unroutable, unserved])
        #expect(bus.batches.withLock { $0 } == [2])
        guard case .failure(let error) = pendings[2] else {
            Issue.record("a queue without consumers should not start: \(pendings[2])")
            return
        }
        #expect(error.status == 503)
        let started = pendings.prefix(2).compactMap { try? $0.get() }
        #expect(started.count == 2)
        let replies = await client.finishAll(started)
        #expect((try? replies[0].get()).map { String(buffer: $0.body) } == "echoed")
        #expect((try? replies[0].get())?.status == 200)
        guard case .failure(let failure) = replies[1] else {
            Issue.record("a returned request should fail: \(replies[1])")
            return
        }
        #expect(failure.status == 503 && failure.detail.contains("NO_ROUTE"))
        #expect(correlator.pending == 0)
    }

    @Test("started together without a task: nothing goes out until every queue's consumers are known; then one batch, and each request is settled once, by index")
    func startAllWithCallbacks() async throws {
        let correlator = Correlator()
        let bus = AnsweringBus(correlator: correlator, answers: ["demo.echo": (200, "text/plain", "echoed")])
        let presence = ConsumerPresence(bus: bus)
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: presence, instanceID: "e")
        var unroutable = try request()
        unroutable.parameters = ["id": "nowhere"]
        let settled = Mutex<[Int: String]>([:])
        let record: @Sendable (Int, Result<GatewayReply, GatewayError>) -> Void = { index, result in
            let shown = switch result {
            case .success(let reply): "\(reply.status) \(String(buffer: reply.body))"
            case .failure(let error): "\(error.status)"
            }
            settled.withLock { #expect($0.updateValue(shown, forKey: index) == nil, "settled twice: \(index)") }
        }
        #expect(!client.startAll([try request(), unroutable], whenSettled: record))
        #expect(bus.seen.withLock { $0 }.isEmpty && settled.withLock { $0 }.isEmpty)
        _ = await presence.check(queue: "demo.echo")
        _ = await presence.check(queue: "demo.nowhere")
        #expect(client.startAll([try request(), unroutable], whenSettled: record))
        #expect(bus.batches.withLock { $0 } == [2])
        #expect(settled.withLock { $0 } == [0: "200 echoed", 1: "503"])
        #expect(correlator.pending == 0)

        let refusing = AnsweringBus(correlator: correlator, answers: [:], refuse: true)
        let refused = RequestReplyClient(bus: refusing, correlator: correlator, presence: presence, instanceID: "e")
        settled.withLock { $0 = [:] }
        #expect(refused.startAll([try request(), try request()], whenSettled: record))
        #expect(settled.withLock { $0 } == [0: "503", 1: "503"])
        #expect(correlator.pending == 0)
    }

    @Test("a batch the bus cannot send fails every request in it and frees their slots")
    func startAllRefused() async throws {
        let correlator = Correlator()
        let bus = AnsweringBus(correlator: correlator, answers: [:], refuse: true)
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "e")
        let results = await client.startAll([try request(), try request()])
        #expect(results.count == 2)
        for result in results {
            guard case .failure(let error) = result else {
                Issue.record("expected a failure, got \(result)")
                continue
            }
            #expect(error.status == 503)
        }
        #expect(correlator.pending == 0)
    }

    @Test("no reply by the deadline is 504, and the slot is freed")
    func timeout() async throws {
        let bus = ScriptedBus()
        let correlator = Correlator(sweepInterval: .milliseconds(2))
        let sweeper = Task { await correlator.run() }
        defer { sweeper.cancel() }
        let client = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "e")
        let error = await #expect(throws: GatewayError.self) { try await client.send(try request(timeout: 30)) }
        #expect(error?.status == 504)
        #expect(correlator.pending == 0)
    }

    @Test("malformed replies are 502", arguments: [
        AMQPFieldValue.string("abc"), .int(99), .int(600), .table([:]),
        // Informational statuses are not answers: a 101 would tell the client the protocol changed.
        .int(100), .int(101), .string("103"), .int(199),
    ])
    func malformedStatus(_ status: AMQPFieldValue) throws {
        let d = Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
            properties: AMQPProperties(headers: ["x-status": status]), body: ByteBuffer(), generation: 1
        )
        #expect(throws: GatewayError.self) { try RequestReplyClient.decodeReply(d, route: "r") }
    }

    @Test("reply headers with line breaks or bad names are 502")
    func malformedHeaders() throws {
        for headers: AMQPTable in [
            ["x-header-x-a": "a\r\nb"], ["x-header-x-a": "a\rb"], ["x-header-x-a": "a\nb"], ["x-header-x-a": "a\0b"],
            ["x-header-bad name": "v"], ["x-header-bad:name": "v"], ["x-header-bäd": "v"], ["x-header-": "v"],
            ["x-header-x-t": .table([:])],
        ] {
            let d = Delivery(
                consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
                properties: AMQPProperties(headers: headers), body: ByteBuffer(), generation: 1
            )
            #expect(throws: GatewayError.self) { try RequestReplyClient.decodeReply(d, route: "r") }
        }
    }

    @Test("only keys that begin with x-header- exactly are response headers")
    func responseHeaderKeys() throws {
        let d = Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
            properties: AMQPProperties(headers: [
                "x-status": 201, "X-Header-a": "v", "x-header": "v", "x-headers-a": "v", "x-header-B": "b", "x-heade": "v", "": "v",
            ]),
            body: ByteBuffer(), generation: 1
        )
        let reply = try RequestReplyClient.decodeReply(d, route: "r")
        #expect(reply.status == 201)
        #expect(reply.headers.map(\.name) == ["b"])
        #expect(reply.headers.map(\.value) == ["b"])
    }

    @Test("reply headers that are tokens with one-line values pass, whatever else their text holds")
    func wellFormedHeaders() throws {
        let d = Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
            properties: AMQPProperties(
                contentType: "text/plain; charset=utf-8",
                headers: ["x-header-X-Odd!#$%&'*+-.^_`|~9": "tab\there, é, 日本, \u{1F600}"]
            ),
            body: ByteBuffer(), generation: 1
        )
        let reply = try RequestReplyClient.decodeReply(d, route: "r")
        #expect(reply.headers.map(\.0) == ["x-odd!#$%&'*+-.^_`|~9"])
        #expect(reply.headers.map(\.1) == ["tab\there, é, 日本, \u{1F600}"])
    }

    @Test("the byte-wise token check agrees with the character one on every scalar up to U+00FF and beyond")
    func tokenBytes() {
        for value in UInt32(0)...0x2FF {
            let scalar = Unicode.Scalar(value)!
            let text = String(Character(scalar))
            #expect(text.utf8.allSatisfy(RoutesFile.isTokenByte) == RoutesFile.isTokenCharacter(scalar), "U+\(String(value, radix: 16))")
            #expect(WireContract.isSingleLine(text) == !["\r", "\n", "\0"].contains(scalar), "U+\(String(value, radix: 16))")
        }
        #expect(!WireContract.isSingleLine("a\r\nb"))
        #expect(WireContract.isSingleLine("日本\u{1F600}"))
    }

    @Test("the body of a reply whose status carries no content is dropped", arguments: [(204, 0), (205, 0), (304, 0), (200, 4), (404, 4)])
    func noContentStatus(status: Int, bodyBytes: Int) throws {
        let d = Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
            properties: AMQPProperties(headers: ["x-status": .int(Int64(status))]), body: ByteBuffer(string: "body"), generation: 1
        )
        let reply = try RequestReplyClient.decodeReply(d, route: "r")
        #expect(reply.status == status)
        #expect(reply.body.readableBytes == bodyBytes)
    }

    @Test("a reply whose body was dropped over the edge's limit is 502 reply-too-large, naming both sizes")
    func droppedBody() throws {
        let d = Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
            properties: AMQPProperties(headers: ["x-status": .int(200)]), body: ByteBuffer(), generation: 1,
            droppedBody: .init(size: 20_000_000, limit: 16_777_216)
        )
        #expect {
            try RequestReplyClient.decodeReply(d, route: "r")
        } throws: { error in
            guard let error = error as? GatewayError else { return false }
            return error.status == 502 && error.type.hasSuffix("/reply-too-large")
                && error.detail == "the worker for route 'r' sent a reply body of 20000000 bytes, more than this edge takes (16777216 bytes, --max-reply-bytes)"
        }
    }

    @Test("a status sent as text by a worker in another language is accepted")
    func statusAsText() throws {
        let d = Delivery(
            consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: "",
            properties: AMQPProperties(headers: ["x-status": "404"]), body: ByteBuffer(), generation: 1
        )
        #expect(try RequestReplyClient.decodeReply(d, route: "r").status == 404)
    }
}
