import GangwayAMQPCore
import GangwayConfig
import NIOCore

/// The gather shape (scatter-gather): one request published to a fan-out exchange, every
/// reply with its correlation id collected until `expect` replies, the `first` k, or the
/// deadline, whichever comes first.
///
/// The answer lists each reply with its replier's id (`x-replier`, or the worker's `app_id`)
/// and says how many were expected and received. No reply at all by the deadline is a 504.
/// The replies' bodies are bounded in all by ``maxBytes``: past it the answer is a 502
/// `reply-too-large`.
public struct GatherClient: Sendable {
    let client: RequestReplyClient
    /// The bytes of replies one gather holds (each counted with a fixed share for its message).
    let maxBytes: Int

    public init(client: RequestReplyClient, maxBytes: Int) {
        self.client = client
        self.maxBytes = maxBytes
    }

    public func send(_ request: GatewayRequest) async throws(GatewayError) -> GatewayReply {
        let route = request.route
        let spec = route.gather ?? Route.GatherSpec()
        let correlationID = client.nextCorrelationID()
        let correlator = client.correlator
        let replies: AsyncThrowingStream<Delivery, any Error>
        do {
            // The replies collected stay counted against the buffer (none is reported taken):
            // what one gather holds is bounded however many answer, and however large.
            (replies, _) = try correlator.openStream(id: correlationID, idleMilliseconds: route.timeoutMilliseconds, timeoutMilliseconds: route.timeoutMilliseconds, bufferBytes: maxBytes)
        } catch {
            throw RequestReplyClient.error(for: error, route: route)
        }
        let message = client.makeMessage(request, correlationID: correlationID)
        do {
            try client.publish(message) { failure in correlator.closeStream(id: correlationID, with: failure) }
        } catch {
            correlator.closeStream(id: correlationID)
            throw error
        }
        var collected: [Delivery] = []
        do {
            for try await reply in replies {
                collected.append(reply)
                if let enough = spec.enough, collected.count >= enough { break }
            }
        } catch Correlator.Failure.timeout {
            // The deadline: answer with what came.
        } catch Correlator.Failure.idle {
            // Same deadline (idle = timeout for a gather).
        } catch Correlator.Failure.overflow {
            throw .gatherTooLarge(route: route.name, limit: maxBytes)
        } catch {
            correlator.closeStream(id: correlationID)
            throw StreamClient.map(error, routeName: route.name)
        }
        correlator.closeStream(id: correlationID)
        if collected.isEmpty {
            throw .timeout(route: route.name, milliseconds: route.timeoutMilliseconds)
        }
        return try render(collected, spec: spec, route: route.name)
    }

    func render(_ replies: [Delivery], spec: Route.GatherSpec, route: String) throws(GatewayError) -> GatewayReply {
        var body = ByteBuffer()
        let expected = spec.expect.map(String.init) ?? "null"
        let complete = spec.enough.map { replies.count >= $0 } ?? false
        body.writeString(#"{"expected":\#(expected),"received":\#(replies.count),"complete":\#(complete),"replies":["#)
        for (i, delivery) in replies.enumerated() {
            let reply = try RequestReplyClient.decodeReply(delivery, route: route)
            let replier = delivery.properties.headers[WireContract.Header.replier]?.stringValue ?? delivery.properties.appID ?? ""
            if i > 0 { body.writeStaticString(",") }
            body.writeString(#"{"replier":\#(JSONString.quote(replier)),"status":\#(reply.status),"body":"#)
            if AggregateClient.isJSON(reply.contentType), JSONValidator.isValid(reply.body) {
                var part = reply.body
                body.writeBuffer(&part)
            } else {
                body.writeString(JSONString.quote(String(buffer: reply.body)))
            }
            body.writeStaticString("}")
        }
        body.writeStaticString("]}")
        return GatewayReply(status: 200, headers: [], contentType: "application/json", contentEncoding: nil, body: body)
    }
}
