import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// The edge's HTTP/1 connections: Hummingbird's, except for connections whose first request
/// opens an event stream.
///
/// Hummingbird serves each connection from a task, and a task keeps the deepest stack it ever
/// had: about 18 KiB for a request that went through the router and middleware. An event
/// stream may stay open for hours and there may be tens of thousands of them, and once its
/// head is written it needs no task at all: the producer writes events straight to the
/// connection (``EventStream/attachSink()``). So when a connection's first request is for an
/// event-stream path, that request goes through the same router and middleware (same
/// validation, errors, request id), and then the connection's task ends while the stream
/// lives on in the pipeline. Such a response says `Connection: close`: when the stream ends,
/// the connection closes. Any other connection is Hummingbird's as usual, and an event stream
/// requested later on a keep-alive connection is served from its task (see
/// ``EventStreamResponse``).
///
/// Each connection's task runs on the connection's event loop (``EventLoopTaskExecutor``).
struct EdgeHTTPChannel: ServerChildChannel, HTTPChannelHandler {
    struct Value: ServerChildChannelValue {
        let channel: any Channel
        let firstRequest: EventLoopFuture<FirstRequestGate.Decision>
    }

    let responder: HTTPChannelHandler.Responder
    let eventStreams: DetachedEventStreams
    /// Request/reply routes served in the pipeline (``RequestReplyChannelHandler``).
    let requestReply: RequestReplyChannelHandler.Configuration?
    let decoderLimits: NIOHTTPDecoderLimitConfiguration
    /// How long a connection may stay idle before it is closed (``Edge/Configuration/idleTimeoutSeconds``).
    let idleTimeout: Duration?
    static let receiveBuffers = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1024, maximum: 65536)

    init(
        responder: @escaping HTTPChannelHandler.Responder,
        eventStreams: DetachedEventStreams,
        requestReply: RequestReplyChannelHandler.Configuration?,
        idleTimeout: Duration?
    ) {
        self.responder = responder
        self.eventStreams = eventStreams
        self.requestReply = requestReply
        self.idleTimeout = idleTimeout
        // Hummingbird's defaults, as `HTTP1Channel` applies them.
        let defaults = HTTP1Channel.Configuration.DecoderConfiguration()
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderFieldSize = defaults.maxHeaderFieldSize
        limits.maxHeaderListSize = defaults.maxHeaderListSize
        limits.maxHeaderFieldCount = defaults.maxHeaderFieldCount
        self.decoderLimits = limits
    }

    /// Hummingbird's HTTP/1 pipeline (as `HTTP1Channel` builds it), with the gate at its end
    /// instead of the async channel: the gate adds that once it knows the connection is an
    /// ordinary one.
    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // A connection keeps its receive buffer while it lives; NIO's first one is 2 KiB.
            // A request head rarely needs more than 1 KiB, and a larger request makes the
            // buffer grow for the reads after it.
            try channel.syncOptions?.setOption(.recvAllocator, value: Self.receiveBuffers)
            let firstRequest = try Self.configure(
                channel.pipeline.syncOperations,
                decoderLimits: decoderLimits,
                idleTimeout: idleTimeout,
                requestReply: requestReply,
                logger: logger
            )
            return Value(channel: channel, firstRequest: firstRequest)
        }
    }

    /// Hummingbird's HTTP/1 handlers (with ``HTTP1ProtocolHandler`` where NIO's protocol error
    /// handler and its HTTP/1-to-HTTP-types codec would be, and Hummingbird's connection-state
    /// handler closing connections idle for `idleTimeout`), the request/reply handler when there
    /// is one, then the gate; the future tells what the first request the gate sees is.
    static func configure(
        _ pipeline: ChannelPipeline.SynchronousOperations,
        decoderLimits: NIOHTTPDecoderLimitConfiguration,
        idleTimeout: Duration? = nil,
        requestReply: RequestReplyChannelHandler.Configuration? = nil,
        logger: Logger
    ) throws -> EventLoopFuture<FirstRequestGate.Decision> {
        try pipeline.configureHTTPServerPipeline(
            withPipeliningAssistance: false,
            withErrorHandling: false,
            withOutboundHeaderValidation: false,
            withEncoderConfiguration: .init(),
            withDecoderLimitConfiguration: decoderLimits
        )
        try pipeline.addHandler(HTTP1ProtocolHandler(maxHeaderBytes: decoderLimits.maxHeaderListSize))
        try pipeline.addHandler(HTTPConnectionStateHandler(idleTimeout: idleTimeout, logger: logger))
        if let requestReply {
            try pipeline.addHandler(RequestReplyChannelHandler(configuration: requestReply))
        }
        let decision = pipeline.eventLoop.makePromise(of: FirstRequestGate.Decision.self)
        try pipeline.addHandler(FirstRequestGate(isEventStream: DetachedEventStreams.accepts, decision: decision))
        return decision.futureResult
    }

    func handle(value: Value, logger: Logger) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor(eventLoop: value.channel.eventLoop)) {
            switch try? await value.firstRequest.get() {
            case .ordinary(let asyncChannel):
                await handleHTTP(asyncChannel: asyncChannel, logger: logger)
            case .eventStream(let head):
                await eventStreams.serve(head, on: value.channel, logger: logger)
            case nil:
                value.channel.close(promise: nil)
            }
        }
    }
}

/// Holds a connection's first request until it is known whether it opens an event stream.
///
/// If it does not, the gate wraps the connection in Hummingbird's async channel, passes on
/// what it held and leaves the pipeline. If it does, it stays and drops whatever the client
/// sends after that request: the connection closes when the stream ends.
final class FirstRequestGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    enum Decision: Sendable {
        case ordinary(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case eventStream(HTTPRequest)
    }

    enum State {
        /// No request head yet.
        case waiting
        /// The head opened an event stream; the rest of that request is still to come.
        case eventStream
        /// The stream's request is complete and the decoder is leaving: parts it still decodes
        /// from what it had buffered (a request the client pipelined) are dropped.
        case discarding
        /// An ordinary connection: the gate is leaving the pipeline.
        case passing
    }

    let isEventStream: @Sendable (HTTPRequest) -> Bool
    /// Until it is fulfilled: its future would keep the request head as long as the stream.
    private var decision: EventLoopPromise<Decision>?
    private(set) var state = State.waiting

    init(isEventStream: @escaping @Sendable (HTTPRequest) -> Bool, decision: EventLoopPromise<Decision>) {
        self.isEventStream = isEventStream
        self.decision = decision
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .waiting:
            if case .head(let head) = unwrapInboundIn(data), isEventStream(head) {
                state = .eventStream
                decision.take()?.succeed(.eventStream(head))
            } else {
                becomeOrdinary(context: context, passing: .read(data))
            }
        case .eventStream:
            if case .end = unwrapInboundIn(data) {
                state = .discarding
                dropDecoder(context: context)
            }
        case .discarding:
            break
        case .passing:
            context.fireChannelRead(data)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .waiting:
            // Hummingbird answers a request it cannot parse with 400.
            becomeOrdinary(context: context, passing: .error(error))
        case .eventStream, .discarding:
            // A stream's request with a malformed end, or input after it: neither is read.
            break
        case .passing:
            context.fireErrorCaught(error)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard state == .waiting, let event = event as? ChannelEvent, event == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        // The client closed its side and no request reached the gate: none will. (Requests
        // served below it, by ``RequestReplyChannelHandler``, are answered before it lets the
        // end of input through.) Hummingbird, which would close the connection, never got it,
        // so the gate closes it, once what was written has gone out: an empty write below the
        // response encoder completes after the writes before it.
        guard let encoder = try? context.pipeline.syncOperations.context(handlerType: HTTPResponseEncoder.self) else {
            context.close(promise: nil)
            return
        }
        let channel = context.channel
        encoder.writeAndFlush(NIOAny(IOData.byteBuffer(ByteBuffer()))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if state == .waiting {
            state = .passing
            decision.take()?.fail(ChannelError.eof)
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if state == .waiting {
            state = .passing
            decision.take()?.fail(ChannelError.ioOnClosedChannel)
        }
    }

    /// What the gate passes on when it decides a connection is an ordinary one.
    enum Held {
        case read(NIOAny)
        case error(any Error)
    }

    /// Passes `held` on to Hummingbird's async channel, then leaves (a removed handler's
    /// context no longer reaches the handlers after it).
    private func becomeOrdinary(context: ChannelHandlerContext, passing held: Held) {
        state = .passing
        do {
            // Its handlers go after this one, so what this one passes on reaches them.
            let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                wrappingChannelSynchronously: context.channel,
                configuration: .init(isOutboundHalfClosureEnabled: true)
            )
            switch held {
            case .read(let data): context.fireChannelRead(data)
            case .error(let error): context.fireErrorCaught(error)
            }
            decision.take()?.succeed(.ordinary(asyncChannel))
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            decision.take()?.fail(error)
            context.close(promise: nil)
        }
    }

    /// The stream's request is complete and nothing after it will be read: the request
    /// decoder (and the buffers it keeps) can go, and a discarder takes the bytes it would have
    /// parsed. The client's FIN still arrives as an event (``EventStreamTap``). The handler
    /// that serves request/reply routes goes too: there will be no requests to serve, and an
    /// event stream may stay open for hours, one of tens of thousands.
    private func dropDecoder(context: ChannelHandlerContext) {
        let pipeline = context.pipeline.syncOperations
        if let requestReply = try? pipeline.handler(type: RequestReplyChannelHandler.self) {
            pipeline.removeHandler(requestReply, promise: nil)
        }
        guard let decoder = try? pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self) else { return }
        do {
            try pipeline.addHandler(InboundDiscarder(), position: .before(decoder))
            pipeline.removeHandler(decoder, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }
}

/// Drops what the client sends on a connection that reads no more requests.
final class InboundDiscarder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

/// Serves the event-stream request a connection opened with, without keeping a task for it.
struct DetachedEventStreams: Sendable {
    let responder: RouterResponder<GatewayRequestContext>
    let serverName: String?

    /// Whether a connection's first request may open an event stream: `GET` on a job's event
    /// stream or on the topic stream. (A request that turns out not to, an error, is answered
    /// all the same, and the connection closed.)
    @Sendable static func accepts(_ head: HTTPRequest) -> Bool {
        guard head.method == .get, let target = head.path else { return false }
        let path = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { target[..<$0] } ?? target[...]
        return path == TopicHandler.streamPath || (path.hasPrefix(JobHandler.prefix) && path.hasSuffix(JobHandler.eventsSuffix))
    }

    /// Answers `head` through the router; an event stream then carries on in the pipeline,
    /// anything else is written out and the connection closed.
    func serve(_ head: HTTPRequest, on channel: any Channel, logger: Logger) async {
        let slot = EventStreamSlot()
        var context = GatewayRequestContext(source: .init(channel: channel, logger: logger))
        context.eventStreamSlot = slot
        var response: Response
        do {
            response = try await responder.respond(to: Request(head: head, body: .init(buffer: ByteBuffer())), context: context)
        } catch {
            // The problem middleware turns the edge's own errors into responses already.
            logger.debug("event stream request failed", metadata: ["error": "\(error)"])
            response = Response(status: .internalServerError)
        }
        response.headers[.date] = HTTPDate.now()
        if let serverName { response.headers[.server] = serverName }
        response.headers[.connection] = "close"
        if let stream = slot.stream {
            // Chunked, as long as it lasts (the response has no body of its own).
            response.headers[.contentLength] = nil
            let head = response.head
            channel.eventLoop.execute { stream.writeDetached(head: head) }
            return
        }
        if let length = response.body.contentLength { response.headers[.contentLength] = String(length) }
        do {
            try await channel.writeAndFlush(HTTPResponsePart.head(response.head))
            try await response.body.write(ChannelBodyWriter(channel: channel))
        } catch {
            logger.debug("could not write the response", metadata: ["error": "\(error)"])
        }
        try? await channel.close()
    }
}

/// Writes a response body straight to a connection.
struct ChannelBodyWriter: ResponseBodyWriter {
    let channel: any Channel

    mutating func write(_ buffer: ByteBuffer) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.body(buffer))
    }

    consuming func finish(_ trailingHeaders: HTTPFields?) async throws {
        try await channel.writeAndFlush(HTTPResponsePart.end(trailingHeaders))
    }
}

/// The `Date` header's format (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
enum HTTPDate {
    static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    static func now() -> String {
        format(secondsSinceEpoch: Int(Date().timeIntervalSince1970))
    }

    static func format(secondsSinceEpoch: Int) -> String {
        var seconds = time_t(secondsSinceEpoch)
        var t = tm()
        gmtime_r(&seconds, &t)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(days[Int(t.tm_wday)]), \(two(t.tm_mday)) \(months[Int(t.tm_mon)]) \(t.tm_year + 1900) \(two(t.tm_hour)):\(two(t.tm_min)):\(two(t.tm_sec)) GMT"
    }
}
