import Foundation
import GangwayCore
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOPosix

/// A `text/event-stream` response fed by an ``SSEOutbox``: what comes first (the `retry:` hint,
/// a reset notice, replayed history) is written as it is, then whatever the outbox collects,
/// each event flushed at once. The outbox bounds how far the client may fall behind: past the
/// bound its connection is closed.
enum EventStreamResponse {
    static let headers: HTTPFields = [
        .contentType: "text/event-stream",
        .cacheControl: "no-cache",
        HTTPField.Name("X-Accel-Buffering")!: "no",
    ]

    /// Reconnection delay the browser's EventSource should use, in ms.
    static let retry = ByteBuffer(string: "retry: 2000\n\n")

    /// The response for an event stream. On a connection that ``EdgeHTTPChannel`` serves
    /// without a task (`context.eventStreamSlot` set), the stream goes into the slot and the
    /// response is only its head; otherwise its body writes the stream.
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
        let stream = EventStream(outbox: outbox, clients: clients, channel: context.channel, preamble: [retry] + preamble, logger: context.logger, onEnd: onEnd)
        if let slot = context.eventStreamSlot {
            slot.stream = stream
            return Response(status: .ok, headers: headers)
        }
        let body = ResponseBody { writer in
            defer { stream.close() }
            try await writer.write(contentsOf: stream.preamble)
            // The writes above are in the pipeline already, so what the sink writes comes
            // after them; `finish` below comes after that.
            stream.attachSink()
            loop: while true {
                switch await outbox.next() {
                case .bytes(let batch):
                    try await writer.write(contentsOf: batch)
                case .end(.finished):
                    break loop
                case .end(.overflow):
                    stream.logCutOff()
                    throw ClientTooSlow(limit: outbox.limit)
                }
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: headers, body: body)
    }
}

/// Where ``EdgeHTTPChannel`` receives the event stream a request turned into, to write it
/// itself instead of through a response body.
final class EventStreamSlot: @unchecked Sendable {  // set by the responder, read after it returned
    var stream: EventStream?
}

/// One open event stream on one connection: its outbox, what goes first, and what to undo
/// when it ends.
final class EventStream: Sendable {
    let outbox: SSEOutbox
    let clients: SSEClients
    let channel: (any Channel)?
    /// Written before anything from the outbox.
    let preamble: [ByteBuffer]
    let logger: Logger
    let onEnd: @Sendable () -> Void
    /// The handler added to the connection's pipeline, to write through (a tap) and to take
    /// out again when the stream ends: a keep-alive connection may carry many streams, one
    /// after another.
    let added: NIOLoopBoundBox<AddedHandler?>?

    init(outbox: SSEOutbox, clients: SSEClients, channel: (any Channel)?, preamble: [ByteBuffer], logger: Logger, onEnd: @escaping @Sendable () -> Void) {
        self.outbox = outbox
        self.clients = clients
        self.channel = channel
        self.preamble = preamble
        self.logger = logger
        self.onEnd = onEnd
        self.added = channel.map { NIOLoopBoundBox<AddedHandler?>.makeEmptyBox(valueType: AddedHandler.self, eventLoop: $0.eventLoop) }
        guard let channel, let added else { return }
        // A client that does not read leaves the writer stuck on back-pressure: closing the
        // connection is what frees it.
        outbox.onOverflow { channel.close(promise: nil) }
        channel.closeFuture.whenComplete { _ in outbox.finish() }
        // Queued on the loop before the response head is written, so the tap sees it.
        channel.eventLoop.execute {
            let pipeline = channel.pipeline.syncOperations
            do {
                if let encoder = try? pipeline.handler(type: HTTPResponseEncoder.self) {
                    let handler = EventStreamTap(outbox: outbox)
                    try pipeline.addHandler(handler, position: .before(encoder))
                    added.value = .tap(handler)
                } else {
                    // Not HTTP/1 (HTTP/2 has no such encoder): only watch for the client.
                    let watcher = ClientGoneWatcher(outbox: outbox)
                    try pipeline.addHandler(watcher, position: .first)
                    added.value = .watcher(watcher)
                }
            } catch {
                outbox.finish()
            }
        }
    }

    /// From here on events go straight from the producer to the connection: no task to wake
    /// per event and client, which is most of the cost of fanning one event out to thousands
    /// of streams. Call it once what must come first is in the pipeline.
    func attachSink() {
        guard let channel, let added else { return }
        outbox.attach(on: channel.eventLoop) { bytes, receipt in
            // The sink runs on the loop, where the tap lives.
            if case .tap(let handler)? = added.value, handler.writeChunk(bytes, receipt: receipt) { return }
            let promise = channel.eventLoop.makePromise(of: Void.self)
            promise.futureResult.whenComplete { _ in receipt.confirm() }
            channel.writeAndFlush(HTTPResponsePart.body(bytes), promise: promise)
        }
    }

    /// The stream is over: unsubscribes, forgets the outbox and takes the added handler out
    /// of the pipeline (after the final chunk, which was queued on the loop before this).
    func close() {
        onEnd()
        clients.close(outbox)
        guard let channel, let added else { return }
        channel.eventLoop.execute {
            guard let handler = added.value else { return }
            added.value = nil
            switch handler {
            case .tap(let tap): channel.pipeline.syncOperations.removeHandler(tap, promise: nil)
            case .watcher(let watcher): channel.pipeline.syncOperations.removeHandler(watcher, promise: nil)
            }
        }
    }

    func logCutOff() {
        logger.notice("sse.client.cut_off", metadata: ["sse.buffer_limit": "\(outbox.limit)"])
    }

    /// Writes the whole stream on `channel` with no task behind it: `head`, what comes first,
    /// then the outbox's events as they come; when the outbox ends, the final chunk, and the
    /// connection is closed (`head` says `Connection: close`). Call it on the channel's loop.
    func writeDetached(head: HTTPResponse) {
        guard let channel else { return }
        channel.write(HTTPResponsePart.head(head), promise: nil)
        for buffer in preamble { channel.write(HTTPResponsePart.body(buffer), promise: nil) }
        channel.flush()
        attachSink()
        outbox.whenEnded { end in
            channel.eventLoop.execute {
                switch end {
                case .finished:
                    channel.writeAndFlush(HTTPResponsePart.end(nil)).whenComplete { _ in channel.close(promise: nil) }
                case .overflow:
                    // The overflow handler closes the connection.
                    self.logCutOff()
                }
                self.close()
            }
        }
    }
}

/// What an event stream added to its connection's pipeline.
enum AddedHandler {
    case tap(EventStreamTap)
    case watcher(ClientGoneWatcher)
}

/// Ends the response of a client that fell behind its event-stream buffer.
struct ClientTooSlow: Error, CustomStringConvertible {
    let limit: Int
    var description: String { "the client fell more than \(limit) bytes behind its event stream" }
}

/// Sits right below the HTTP/1 response encoder of an event-stream connection (above TLS,
/// if any) and does two things there.
///
/// It ends the stream at once when the client goes away while the stream is idle, not at the
/// next heartbeat: the server allows half-closed connections, so the client's FIN arrives as
/// `inputClosed`, which the HTTP pipeline above holds back while a response is under way.
///
/// And it writes events as ready-made chunks: fanning one event out to thousands of
/// connections otherwise costs a trip through the HTTP handlers above and three writes (size
/// line, data, CRLF) per connection. It does so only once it has seen the encoder send the
/// response head with `transfer-encoding: chunked`; until then, and for any other framing, the
/// events go down the pipeline as before. Everything happens on the connection's event loop,
/// so a chunk written here keeps its place between what came down the pipeline before it and
/// the final chunk the encoder writes after it.
final class EventStreamTap: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    enum Framing {
        case unknown
        case chunked
        case other
    }

    let outbox: SSEOutbox
    private var context: ChannelHandlerContext?
    private(set) var framing = Framing.unknown

    init(outbox: SSEOutbox) {
        self.outbox = outbox
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        ClientGoneWatcher.observe(event, for: outbox)
        context.fireUserInboundEventTriggered(event)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if framing == .unknown, case .byteBuffer(let bytes) = unwrapOutboundIn(data) {
            framing = Self.framing(ofHead: bytes) ?? .unknown
        }
        context.write(data, promise: promise)
    }

    /// Writes `bytes` as one chunk and flushes it, if the response is chunked; confirms
    /// `receipt` once the chunk has left the process (or cannot).
    /// - Returns: false when it did not (framing unknown or not chunked): write it the usual way.
    func writeChunk(_ bytes: ByteBuffer, receipt: SSEOutbox.Receipt) -> Bool {
        guard framing == .chunked, let context else { return false }
        guard bytes.readableBytes > 0 else {
            // An empty chunk would end the body.
            receipt.confirm()
            return true
        }
        context.writeAndFlush(wrapOutboundOut(.byteBuffer(Self.chunk(of: bytes))), promise: nil)
        if let buffered = try? context.channel.syncOptions?.getOption(.bufferedWritableBytes), buffered == 0 {
            // The kernel took it all (the usual case): no promise to make and complete per write.
            receipt.confirm()
        } else {
            // Some is still queued (a slow client) or the channel is gone: an empty write after
            // it completes, in order, once everything before it has left.
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.whenComplete { _ in receipt.confirm() }
            context.writeAndFlush(wrapOutboundOut(.byteBuffer(ByteBuffer())), promise: promise)
        }
        return true
    }

    /// The last chunk framed on this thread. A fan-out writes one event to every connection
    /// of a loop in turn, so the event is framed once per loop, not once per connection.
    final class LastChunk: @unchecked Sendable {  // touched only by the thread that owns it
        var bytes: ByteBuffer?
        var chunk = ByteBuffer()
    }

    private static let lastChunk = ThreadSpecificVariable<LastChunk>()

    static func chunk(of bytes: ByteBuffer) -> ByteBuffer {
        let last = lastChunk.currentValue ?? {
            let fresh = LastChunk()
            lastChunk.currentValue = fresh
            return fresh
        }()
        if last.bytes == bytes { return last.chunk }
        var chunk = ByteBuffer()
        chunk.reserveCapacity(bytes.readableBytes + 12)
        chunk.writeString(String(bytes.readableBytes, radix: 16))
        chunk.writeStaticString("\r\n")
        chunk.writeImmutableBuffer(bytes)
        chunk.writeStaticString("\r\n")
        last.bytes = bytes
        last.chunk = chunk
        return chunk
    }

    /// The framing a response head announces; nil when `bytes` is not a response head.
    static func framing(ofHead bytes: ByteBuffer) -> Framing? {
        guard let text = bytes.getString(at: bytes.readerIndex, length: min(bytes.readableBytes, 8192)),
              text.hasPrefix("HTTP/1."),
              let end = text.range(of: "\r\n\r\n")
        else { return nil }
        for line in text[..<end.lowerBound].split(separator: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces).lowercased()
            if name == "content-length" { return .other }
            if name == "transfer-encoding" { return value == "chunked" ? .chunked : .other }
        }
        return .other
    }
}

/// Ends an event stream when its client closes its side of the connection (for connections
/// without an HTTP/1 encoder to sit under; see ``EventStreamTap``).
final class ClientGoneWatcher: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny
    let outbox: SSEOutbox

    init(outbox: SSEOutbox) {
        self.outbox = outbox
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        Self.observe(event, for: outbox)
        context.fireUserInboundEventTriggered(event)
    }

    /// The client closed its side: the stream is over.
    static func observe(_ event: Any, for outbox: SSEOutbox) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            outbox.finish()
        }
    }
}
