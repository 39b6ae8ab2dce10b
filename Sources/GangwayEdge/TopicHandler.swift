import GangwayAMQPCore
import GangwayCore
import HTTPTypes
import Hummingbird
import NIOCore

/// Publish/subscribe on topics:
///
/// - `POST /v1/topics/{topic}` publishes the body as a persistent message on `gangway.topics`
///   with routing key `{topic}` and answers `202` once the broker confirmed it.
/// - `GET /v1/topics/stream?match=<pattern>&match=…` is an event stream of every event whose
///   topic matches a pattern (`*` one word, `#` any number), filtered by the broker through
///   the edge's topic queue; `Last-Event-ID` (or `lastEventId`) resumes.
struct TopicHandler: Sendable {
    let hub: TopicHub
    let bus: any MessageBus
    let clients: SSEClients
    let maxBodyBytes: Int
    static let prefix = "/v1/topics/"
    static let streamPath = "/v1/topics/stream"
    /// Patterns one stream may follow.
    static let maxPatterns = 32

    /// Handles the topic endpoints; nil for other requests.
    func handleBuiltIn(_ request: Request, context: GatewayRequestContext) async throws -> Response? {
        let path = request.uri.path
        guard path.hasPrefix(Self.prefix) else { return nil }
        if path == Self.streamPath && request.method == .get {
            return try await subscribe(request, context: context)
        }
        let topic = String(path.dropFirst(Self.prefix.count))
        guard request.method == .post else {
            throw GatewayError.methodNotAllowed(method: request.method.rawValue, path: path, allow: path == Self.streamPath ? ["GET", "POST"] : ["POST"])
        }
        guard TopicPattern.isValidTopic(topic) else {
            throw GatewayError.badRequest("'\(topic)' is not a topic: use 1 to 255 bytes of words (letters, digits, '_', '-', ':') separated by dots")
        }
        return try await publish(request, context: context, topic: topic)
    }

    func publish(_ request: Request, context: GatewayRequestContext, topic: String) async throws -> Response {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > maxBodyBytes {
            throw GatewayError.payloadTooLarge(limit: maxBodyBytes)
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: maxBodyBytes)
        } catch {
            throw GatewayError.payloadTooLarge(limit: maxBodyBytes)
        }
        let id = TopicHub.newEventID()
        var properties = AMQPProperties(
            contentType: request.headers[.contentType],
            headers: [WireContract.Header.requestID: .string(context.requestID)],
            deliveryMode: 2,
            messageID: id,
            timestamp: UInt64(WireContract.epochMilliseconds() / 1000),
            appID: WireContract.appID
        )
        if !context.traceparent.isEmpty { properties.headers[WireContract.Header.traceparent] = .string(context.traceparent) }
        let message = OutboundMessage(exchange: WireContract.topicsExchange.name, routingKey: topic, properties: properties, body: body)
        let outcome: PublishOutcome
        do {
            outcome = try await bus.publish(message, confirmWithin: defaultConfirmTimeout)
        } catch {
            throw GatewayError.brokerUnavailable("\(error)")
        }
        guard case .confirmed = outcome else {
            throw GatewayError.brokerUnavailable("the broker refused the event")
        }
        let json = #"{"id":"\#(id)","topic":"\#(topic)"}"#
        return Response(status: .accepted, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: json)))
    }

    func subscribe(_ request: Request, context: GatewayRequestContext) async throws -> Response {
        let texts = request.uri.queryParameters.getAll("match")
        guard !texts.isEmpty else {
            throw GatewayError.badRequest("say which topics to follow: ?match=<pattern>, repeated as needed ('*' one word, '#' any number)")
        }
        guard texts.count <= Self.maxPatterns else {
            throw GatewayError.badRequest("at most \(Self.maxPatterns) match patterns per stream")
        }
        var patterns: [TopicPattern] = []
        for text in texts {
            guard let pattern = TopicPattern(text) else {
                throw GatewayError.badRequest("'\(text)' is not a topic pattern: words (letters, digits, '_', '-', ':'), '*' or '#', separated by dots")
            }
            patterns.append(pattern)
        }
        let lastEventID = request.headers[HTTPField.Name("Last-Event-ID")!] ?? request.uri.queryParameters.get("lastEventId")
        let outbox = clients.open()
        let subscription: TopicHub.Subscription
        do {
            subscription = try await hub.subscribe(patterns, lastEventID: lastEventID, outbox: outbox)
        } catch {
            clients.close(outbox)
            throw GatewayError.brokerUnavailable("could not subscribe: \(error)")
        }
        var preamble: [ByteBuffer] = []
        if subscription.reset {
            preamble.append(SSEEncoder.event(name: "reset", data: #"{"reason":"events after the given Last-Event-ID are no longer kept; some may be missing"}"#))
        }
        preamble += subscription.replay
        let hub = hub
        return EventStreamResponse.make(outbox: outbox, clients: clients, context: context, preamble: preamble) {
            hub.unsubscribe(subscription.id)
        }
    }
}
