import GangwayCore
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTPTypes

/// A `text/event-stream` response fed by an ``SSEOutbox``: what comes first (the `retry:` hint,
/// a reset notice, replayed history) is written as it is, then whatever the outbox collects,
/// batch by batch, each batch flushed at once. The outbox bounds how far the client may fall
/// behind: past the bound its connection is closed.
enum EventStreamResponse {
    static let headers: HTTPFields = [
        .contentType: "text/event-stream",
        .cacheControl: "no-cache",
        HTTPField.Name("X-Accel-Buffering")!: "no",
    ]

    /// Reconnection delay the browser's EventSource should use, in ms.
    static let retry = ByteBuffer(string: "retry: 2000\n\n")

    /// - Parameters:
    ///   - outbox: registered in `clients`; closed here when the stream ends.
    ///   - preamble: written before anything from the outbox.
    ///   - onEnd: runs when the stream ends for any reason (unsubscribe).
    static func make(
        outbox: SSEOutbox,
        clients: SSEClients,
        context: GatewayRequestContext,
        preamble: [ByteBuffer],
        onEnd: @escaping @Sendable () -> Void
    ) -> Response {
        if let channel = context.channel {
            // A client that does not read leaves the writer stuck on back-pressure: closing the
            // connection is what frees it.
            outbox.onOverflow { channel.close(promise: nil) }
            // A client that goes away while the stream is idle ends it at once, not at the next
            // heartbeat: its subscriptions are released now. The server allows half-closed
            // connections, so the client's FIN arrives as `inputClosed`, which the HTTP pipeline
            // holds back while a response is under way: watch for it ahead of the pipeline.
            channel.closeFuture.whenComplete { _ in outbox.finish() }
            channel.pipeline.addHandler(ClientGoneWatcher(outbox: outbox), position: .first).whenFailure { _ in outbox.finish() }
        }
        let logger = context.logger
        let channel = context.channel
        let body = ResponseBody { writer in
            defer {
                onEnd()
                clients.close(outbox)
            }
            try await writer.write(contentsOf: [retry] + preamble)
            if let channel {
                // From here on events go straight from the producer to the connection: no task
                // to wake per event and client, which is most of the cost of fanning one event
                // out to thousands of streams. The writes above are in the pipeline already, so
                // these come after them; `finish` below comes after these.
                outbox.attach(on: channel.eventLoop) { bytes, written in
                    let promise = channel.eventLoop.makePromise(of: Void.self)
                    promise.futureResult.whenComplete { _ in written() }
                    channel.writeAndFlush(HTTPResponsePart.body(bytes), promise: promise)
                }
            }
            loop: while true {
                switch await outbox.next() {
                case .bytes(let batch):
                    try await writer.write(contentsOf: batch)
                case .end(.finished):
                    break loop
                case .end(.overflow):
                    logger.notice("sse.client.cut_off", metadata: ["sse.buffer_limit": "\(outbox.limit)"])
                    throw ClientTooSlow(limit: outbox.limit)
                }
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }
}

/// Ends the response of a client that fell behind its event-stream buffer.
struct ClientTooSlow: Error, CustomStringConvertible {
    let limit: Int
    var description: String { "the client fell more than \(limit) bytes behind its event stream" }
}

/// Ends an event stream when its client closes its side of the connection.
final class ClientGoneWatcher: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny
    let outbox: SSEOutbox

    init(outbox: SSEOutbox) {
        self.outbox = outbox
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            outbox.finish()
        }
        context.fireUserInboundEventTriggered(event)
    }
}
