import GangwayAMQPCore
import GangwayConfig
@testable import GangwayCore
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A bus whose "workers" answer by routing key, at once, on the publishing thread; a message
/// whose routing key has no answer is returned. Queues in `unserved` have no consumers; with
/// `refuse` nothing can be sent. Batches are recorded by size.
final class AnsweringBus: MessageBus {
    struct Refused: Error {}
    let replyQueue = "gangway.reply.test"
    let isReady = true
    let correlator: Correlator
    let answers: [String: (status: Int, contentType: String, body: String)]
    let unserved: Set<String>
    let refuse: Bool
    let seen = Mutex<[OutboundMessage]>([])
    let batches = Mutex<[Int]>([])

    init(correlator: Correlator, answers: [String: (status: Int, contentType: String, body: String)], unserved: Set<String> = [], refuse: Bool = false) {
        self.correlator = correlator
        self.answers = answers
        self.unserved = unserved
        self.refuse = refuse
    }

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome { .confirmed }

    func publish(_ batch: [(message: OutboundMessage, onSettled: @Sendable (Result<PublishOutcome, any Error>) -> Void)]) throws {
        if refuse { throw Refused() }
        batches.withLock { $0.append(batch.count) }
        for (message, onSettled) in batch { try publish(message, onSettled: onSettled) }
    }

    func publish(_ message: OutboundMessage, onSettled: @escaping @Sendable (Result<PublishOutcome, any Error>) -> Void) throws {
        if refuse { throw Refused() }
        seen.withLock { $0.append(message) }
        guard let answer = answers[message.routingKey] else {
            onSettled(.success(.returned(replyCode: 312, replyText: "NO_ROUTE")))
            return
        }
        onSettled(.success(.confirmed))
        correlator.deliver(
            Delivery(
                consumerTag: "", deliveryTag: 1, redelivered: false, exchange: "", routingKey: replyQueue,
                properties: AMQPProperties(contentType: answer.contentType, headers: ["x-status": .int(Int64(answer.status)), "x-header-etag": "v1"], correlationID: message.properties.correlationID),
                body: ByteBuffer(string: answer.body), generation: 1
            )
        )
    }

    func consumerCount(queue: String) async throws -> UInt32? { unserved.contains(queue) ? 0 : 1 }
}

@Suite("Aggregation over a scripted bus")
struct AggregateTests {
    func request(policy: AggregateSpec.Policy, legs: [AggregateSpec.Leg]) throws -> GatewayRequest {
        let route = Route(
            name: "dash", method: "GET", path: try PathTemplate("/v1/dash"), shape: .aggregate, exchange: "x",
            routingKey: try KeyTemplate(""), timeoutMilliseconds: 1000, maxBodyBytes: 100,
            aggregate: AggregateSpec(legs: legs, policy: policy)
        )
        return GatewayRequest(route: route, parameters: [:], method: "GET", path: "/v1/dash", query: "", headers: [], body: ByteBuffer(), requestID: "r", traceparent: "t")
    }

    func leg(_ key: String, _ routingKey: String, uses: [String: AggregateSpec.Reference] = [:], keep: Set<String> = []) throws -> AggregateSpec.Leg {
        let route = Route(name: "dash.\(key)", method: "", path: try PathTemplate("/v1/dash"), exchange: "x", routingKey: try KeyTemplate(routingKey), timeoutMilliseconds: 1000, maxBodyBytes: 0)
        return AggregateSpec.Leg(key: key, route: route, keepHeaders: keep, uses: uses)
    }

    func client(_ answers: [String: (status: Int, contentType: String, body: String)]) -> (AggregateClient, AnsweringBus) {
        let correlator = Correlator()
        let bus = AnsweringBus(correlator: correlator, answers: answers)
        let rr = RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "e")
        return (AggregateClient(client: rr), bus)
    }

    @Test("JSON answers are embedded as they came, text as a string, kept headers prefixed by key")
    func merge() async throws {
        let (c, _) = client(["p": (200, "application/json", #"{"id": "u1"}"#), "t": (200, "text/plain", "he said \"hi\"\n")])
        let reply = try await c.send(try request(policy: .all, legs: [try leg("profile", "p", keep: ["etag"]), try leg("note", "t")]))
        #expect(reply.status == 200 && reply.contentType == "application/json")
        #expect(String(buffer: reply.body) == #"{"profile":{"id": "u1"},"note":"he said \"hi\"\n"}"#)
        #expect(reply.headers.map(\.name) == ["profile-etag"])
    }

    @Test("policy all: one failed leg fails the whole with a 502 naming it")
    func allPolicy() async throws {
        let (c, _) = client(["p": (200, "application/json", "{}")])
        let error = await #expect(throws: GatewayError.self) {
            try await c.send(try request(policy: .all, legs: [try leg("profile", "p"), try leg("orders", "missing")]))
        }
        #expect(error?.status == 502)
        #expect(error?.detail.contains("orders (503") == true)
    }

    @Test("policy partial: the answers plus an errors object and the partial header; a worker's 4xx is a failure")
    func partialPolicy() async throws {
        let (c, _) = client(["p": (200, "application/json", "[1]"), "n": (404, "application/json", "{}")])
        let reply = try await c.send(try request(policy: .partial, legs: [try leg("a", "p"), try leg("b", "n")]))
        let text = String(buffer: reply.body)
        #expect(text.hasPrefix(#"{"a":[1],"errors":{"b":{"status":404"#))
        #expect(reply.headers.contains { $0.name == "x-gangway-partial" && $0.value == "true" })
    }

    @Test("partial never answers 200 with nothing in it")
    func partialAllFailed() async throws {
        let (c, _) = client([:])
        let error = await #expect(throws: GatewayError.self) {
            try await c.send(try request(policy: .partial, legs: [try leg("a", "x"), try leg("b", "y")]))
        }
        #expect(error?.status == 502)
    }

    @Test("a leg declared JSON with an invalid body fails")
    func invalidJSON() async throws {
        let (c, _) = client(["p": (200, "application/json", "{nope")])
        let error = await #expect(throws: GatewayError.self) { try await c.send(try request(policy: .all, legs: [try leg("a", "p")])) }
        #expect(error?.detail.contains("not valid JSON") == true)
    }

    @Test("a chained leg takes its value from the earlier reply and runs after it")
    func chained() async throws {
        let (c, bus) = client(["p": (200, "application/json", #"{"owner": {"id": 7}}"#), "o": (200, "application/json", "{}")])
        let chained = try leg("orders", "o", uses: ["user": try #require(AggregateSpec.Reference("/profile/owner/id"))])
        _ = try await c.send(try request(policy: .all, legs: [chained, try leg("profile", "p")]))
        let messages = bus.seen.withLock { $0 }
        #expect(messages.map(\.routingKey) == ["p", "o"])
        #expect(messages[1].properties.headers["x-param-user"] == "7")
    }

    /// `send(_:on:executor:completion:)`, awaited; the completion must come on the loop.
    func sendWithCompletion(_ c: AggregateClient, _ request: GatewayRequest) async -> Result<GatewayReply, GatewayError> {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        return await withCheckedContinuation { continuation in
            c.send(request, on: loop) { result in
                #expect(loop.inEventLoop)
                continuation.resume(returning: result)
            }
        }
    }


    /// `send(_:)`, as a result.
    func sendWithTask(_ c: AggregateClient, _ request: GatewayRequest) async -> Result<GatewayReply, GatewayError> {
        do throws(GatewayError) {
            return .success(try await c.send(request))
        } catch {
            return .failure(error)
        }
    }

    /// What a result shows a client: the status, then the body or the problem's detail.
    func shown(_ result: Result<GatewayReply, GatewayError>) -> String {
        switch result {
        case .success(let reply): "\(reply.status) \(String(buffer: reply.body)) \(reply.headers.map { "\($0.name)=\($0.value)" })"
        case .failure(let error): "\(error.status) \(error.detail)"
        }
    }

    @Test("without a task the legs go out as one batch, and every outcome is what the task would give", arguments: [
        (AggregateSpec.Policy.all, ["p", "t"]), (.all, ["p", "missing"]), (.partial, ["p", "n"]), (.partial, ["x", "y"]), (.all, ["bad"]),
    ])
    func withoutTask(_ policy: AggregateSpec.Policy, _ keys: [String]) async throws {
        let answers: [String: (status: Int, contentType: String, body: String)] = [
            "p": (200, "application/json", #"{"id": "u1"}"#), "t": (200, "text/plain", "hi"), "n": (404, "application/json", "{}"),
            "bad": (200, "application/json", "{nope"),
        ]
        let legs = try keys.enumerated().map { try leg("k\($0.offset)", $0.element, keep: ["etag"]) }
        let (c, bus) = client(answers)
        let expected = shown(await sendWithTask(c, try request(policy: policy, legs: legs)))
        let (direct, directBus) = client(answers)
        let got = shown(await sendWithCompletion(direct, try request(policy: policy, legs: legs)))
        #expect(got == expected)
        #expect(directBus.batches.withLock { $0 } == [keys.count])
        #expect(bus.batches.withLock { $0 } == [keys.count])
    }

    @Test("a leg whose queue's consumers are not known yet, or a chained leg, takes the task: the same answers")
    func taskWhenNeeded() async throws {
        let (c, bus) = client(["p": (200, "application/json", #"{"owner": {"id": 7}}"#), "o": (200, "application/json", "{}")])
        var asked = try leg("profile", "p")
        asked.route.queue = try KeyTemplate("p")
        let first = await sendWithCompletion(c, try request(policy: .all, legs: [asked, try leg("orders", "o")]))
        #expect(shown(first) == #"200 {"profile":{"owner": {"id": 7}},"orders":{}} []"#)
        // The consumers are known now: the next one goes out without a task, in one batch.
        _ = await sendWithCompletion(c, try request(policy: .all, legs: [asked, try leg("orders", "o")]))
        #expect(bus.batches.withLock { $0 } == [2, 2])
        let chained = try leg("orders", "o", uses: ["user": try #require(AggregateSpec.Reference("/profile/owner/id"))])
        let third = await sendWithCompletion(c, try request(policy: .all, legs: [chained, try leg("profile", "p")]))
        #expect(shown(third) == #"200 {"orders":{},"profile":{"owner": {"id": 7}}} []"#)
        #expect(bus.seen.withLock { $0 }.suffix(2).map { $0.properties.headers["x-param-user"] } == [nil, "7"])
    }

    @Test("a chained leg whose value is missing fails with the reason")
    func chainedMissing() async throws {
        let (c, _) = client(["p": (200, "application/json", #"{"owner": {}}"#), "o": (200, "application/json", "{}")])
        let chained = try leg("orders", "o", uses: ["user": try #require(AggregateSpec.Reference("/profile/owner/id"))])
        let error = await #expect(throws: GatewayError.self) { try await c.send(try request(policy: .all, legs: [try leg("profile", "p"), chained])) }
        #expect(error?.detail.contains("no value at /profile/owner/id") == true)
    }
}

@Suite("Aggregate leg bodies from a template")
struct AggregateTemplateTests {
    @Test("a body template gets chained values JSON-escaped, with its own content type")
    func template() async throws {
        let correlator = Correlator()
        let bus = AnsweringBus(correlator: correlator, answers: ["p": (200, "application/json", #"{"name": "A \"B\""}"#), "o": (200, "application/json", "{}")])
        let client = AggregateClient(client: RequestReplyClient(bus: bus, correlator: correlator, presence: ConsumerPresence(bus: bus), instanceID: "e"))
        let path = try PathTemplate("/v1/dash")
        let first = AggregateSpec.Leg(key: "profile", route: Route(name: "d.p", method: "", path: path, exchange: "x", routingKey: try KeyTemplate("p"), timeoutMilliseconds: 1000, maxBodyBytes: 0))
        let second = AggregateSpec.Leg(
            key: "orders",
            route: Route(name: "d.o", method: "", path: path, exchange: "x", routingKey: try KeyTemplate("o"), timeoutMilliseconds: 1000, maxBodyBytes: 0),
            bodyTemplate: try KeyTemplate(#"{"owner": "${who}"}"#, opener: "${"),
            uses: ["who": try #require(AggregateSpec.Reference("/profile/name"))]
        )
        let route = Route(
            name: "d", method: "GET", path: path, shape: .aggregate, exchange: "x", routingKey: try KeyTemplate(""), timeoutMilliseconds: 1000,
            maxBodyBytes: 0, aggregate: AggregateSpec(legs: [first, second], policy: .all)
        )
        let request = GatewayRequest(route: route, parameters: [:], method: "GET", path: "/v1/dash", query: "", headers: [("content-type", "text/plain")], body: ByteBuffer(string: "client body"), requestID: "r", traceparent: "t")
        _ = try await client.send(request)
        let sent = bus.seen.withLock { $0 }
        #expect(String(buffer: sent[1].body) == #"{"owner": "A \"B\""}"#)
        #expect(sent[1].properties.contentType == "application/json")
        #expect(String(buffer: sent[0].body) == "client body")
    }
}

@Suite("Which reply bodies an aggregate embeds as JSON")
struct JSONContentTypeTests {
    @Test("application/json and +json, whatever the case, spaces and parameters", arguments: [
        "application/json", "Application/JSON", "application/json; charset=utf-8", "  application/json ;q=1",
        "application/problem+json", "application/vnd.api+JSON; x=y",
    ])
    func json(_ contentType: String) {
        #expect(AggregateClient.isJSON(contentType))
    }

    @Test("anything else is text", arguments: [
        "text/plain", "application/jsonx", "application/json-seq", "text/json+", "+json", "json", "", ";application/json",
    ])
    func notJSON(_ contentType: String) {
        #expect(!AggregateClient.isJSON(contentType))
    }

    @Test("no content type is not JSON")
    func none() {
        #expect(!AggregateClient.isJSON(nil))
    }
}
