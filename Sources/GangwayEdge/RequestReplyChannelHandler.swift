import GangwayConfig
import GangwayCore
import HTTPTypes
import HummingbirdCore
import NIOCore
import NIOHTTPTypes

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Serves request/reply and aggregate routes straight from a connection's pipeline, without
/// a task in the common case (a task on the connection's loop for chained legs).
///
/// Through Hummingbird, one request/reply request suspends and resumes its connection's task
/// several times: for the head, for the body, for the reply, for the writes; each resumption
/// is a job queued on the event loop, and the reply's arrives from the AMQP consumer's thread.
/// Those hand-offs cost the event loops more than the HTTP work itself. This handler sits
/// between Hummingbird's connection state handler and the rest of its pipeline. It takes a
/// request whose route has the request/reply shape, publishes it as soon as its body is in,
/// and writes the response when the reply (or the failure) is handed over, one hop to the
/// event loop. An aggregate request's legs go out together and its response is written the
/// same way, once the last leg is settled. The request id, trace context, limits and problem responses are those of the
/// middleware: the client cannot tell which way a request went. Every other request goes up to
/// Hummingbird unchanged.
///
/// Responses leave in request order. While Hummingbird owes a response, every request goes to
/// Hummingbird, pipelined or not. While this handler owes one, what the client sends after the
/// request (a pipelining client) is held, and reading stops once something is held, until the
/// response is written. Reading does not stop merely because a response is owed: a client that
/// waits for its response sends nothing meanwhile, and stopping and resuming would cost two
/// `epoll_ctl` calls per request. The client's end of input (a half-close after its request)
/// is held the same way and passed on after the response.
final class RequestReplyChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// What every connection's handler shares.
    struct Configuration: Sendable {
        var routes: RouteTable
        /// Paths the edge serves itself, exactly, whatever the routes say.
        var reservedPaths: Set<String>
        /// Path prefixes of the edge's built-in endpoints (jobs, topics): left to Hummingbird,
        /// which decides between them and the routes.
        var reservedPrefixes: [String]
        var serverName: String?
        /// Sends a request/reply request; the callback may come on any thread.
        var send: @Sendable (GatewayRequest, @escaping @Sendable (Result<GatewayReply, GatewayError>) -> Void) -> Void
        /// Sends an aggregate request; the callback comes on the event loop given, and a task
        /// it needs (for chained legs) runs on the executor given, the same loop's. Nil leaves
        /// aggregate routes to Hummingbird.
        var aggregate: (@Sendable (GatewayRequest, any EventLoop, any TaskExecutor, @escaping @Sendable (Result<GatewayReply, GatewayError>) -> Void) -> Void)?

        /// The route of a request this handler serves, or nil for one that goes to Hummingbird.
        func route(method: HTTPRequest.Method, path: String) -> (Route, [String: String])? {
            guard !reservedPaths.contains(path), !reservedPrefixes.contains(where: { path.hasPrefix($0) }),
                case .matched(let route, let parameters) = routes.match(method: method.rawValue, path: path),
                route.shape == .requestReply || (route.shape == .aggregate && aggregate != nil)
            else { return nil }
            return (route, parameters)
        }
    }

    /// A request this handler serves: a class, so that passing it through the state and the
    /// calls that serve it costs one reference count, not one per field.
    final class Accepted {
        let head: HTTPRequest
        let uri: URI
        let route: Route
        let parameters: [String: String]
        /// The body read so far; handed on to the message when the request ends.
        var body: ByteBuffer?
        let requestID: String
        let traceparent: String
        /// The client asked to close the connection after the response.
        let close: Bool

        init(head: HTTPRequest, uri: URI, route: Route, parameters: [String: String], requestID: String, traceparent: String, close: Bool) {
            self.head = head
            self.uri = uri
            self.route = route
            self.parameters = parameters
            self.requestID = requestID
            self.traceparent = traceparent
            self.close = close
        }
    }

    enum State {
        /// Between requests: nothing owed, nothing being read.
        case idle
        /// Hummingbird owes `owed` responses; `reading` while the last request passed up to it
        /// is still arriving.
        case passing(owed: Int, reading: Bool)
        /// Reading the body of a request served here.
        case reading(Accepted)
        /// The request is published; its response is not written yet. The request is kept
        /// here (without its body) for the response, rather than in the callback that brings the
        /// reply: that callback passes through the consumer's thread, and every field it
        /// captured would be copied and released there.
        case waiting(Accepted)
        /// Answered before the end of the request arrived (its body too large): the rest of it
        /// is dropped.
        case discarding
    }

    let configuration: Configuration
    private(set) var state = State.idle
    /// Parts that arrived while a response was owed here, in order.
    private var held = CircularBuffer<HTTPRequestPart>(initialCapacity: 2)
    /// An error the decoder raised after the held parts (a malformed body), passed on in turn.
    private var heldError: (any Error)?
    /// A read was asked for while parts were held.
    private var readDeferred = false
    /// The client closed its side (`ChannelEvent.inputClosed`) while a response was owed or
    /// parts were held: passed on after them.
    private var inputClosedHeld = false
    /// ``resumeReading(context:)`` is handling held parts.
    private var replaying = false
    private var context: ChannelHandlerContext?
    private var executor: EventLoopTaskExecutor?
    /// The cached `Date` value and the second it is for.
    private var date = (second: 0, value: "")

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if isOwing || !held.isEmpty {
            held.append(part)
        } else {
            handle(part, context: context)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if isOwing || !held.isEmpty {
            // It belongs to a request after the one being answered: it waits its turn.
            heldError = error
            return
        }
        switch state {
        case .reading(let accepted):
            // A malformed body (a bad chunk): answer and close, as Hummingbird would.
            state = .discarding
            respond(to: accepted, with: .failure(error), close: true, context: context)
        default:
            context.fireErrorCaught(error)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        held.removeAll()
        heldError = nil
        inputClosedHeld = false
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Hummingbird ends the connection at the end of its input: while a response is owed
        // here, or requests are held, that would come before them.
        if let event = event as? ChannelEvent, event == .inputClosed, isOwing || !held.isEmpty {
            inputClosedHeld = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// One part in arrival order, none held before it.
    private func handle(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch (state, part) {
        case (.idle, .head(let head)):
            let fields = ReadFields(head.headerFields)
            guard let accepted = accept(head, fields) else {
                state = .passing(owed: 1, reading: true)
                // Nothing is owed before it, so an interim answer cannot overtake a response.
                continueIfExpected(fields, context: context)
                context.fireChannelRead(wrapInboundOut(part))
                return
            }
            if let length = fields.contentLength.flatMap({ Int($0) }), length > accepted.route.maxBodyBytes {
                state = .discarding
                // A client that expected a 100 may never send the body the decoder waits for
                // (curl does not): the connection cannot carry another request.
                let close = accepted.close || fields.expectsContinue
                respond(to: accepted, with: .failure(GatewayError.payloadTooLarge(limit: accepted.route.maxBodyBytes)), close: close, context: context)
            } else {
                state = .reading(accepted)
                continueIfExpected(fields, context: context)
            }
        case (.reading(let accepted), .body(let bytes)):
            let limit = accepted.route.maxBodyBytes
            if (accepted.body?.readableBytes ?? 0) + bytes.readableBytes > limit {
                state = .discarding
                respond(to: accepted, with: .failure(GatewayError.payloadTooLarge(limit: limit)), close: accepted.close, context: context)
                return
            }
            if accepted.body == nil {
                accepted.body = bytes
            } else {
                var more = bytes
                accepted.body!.writeBuffer(&more)
            }
        case (.reading(let accepted), .end):
            // The body moves on to the message; the response needs the rest.
            let body = accepted.body ?? ByteBuffer()
            accepted.body = nil
            state = .waiting(accepted)
            send(accepted, body: body)
        case (.discarding, .end):
            state = .idle
            resumeReading(context: context)
        case (.discarding, _):
            break
        case (.passing(let owed, _), .head):
            state = .passing(owed: owed + 1, reading: true)
            context.fireChannelRead(wrapInboundOut(part))
        case (.passing(let owed, _), .end):
            state = owed == 0 ? .idle : .passing(owed: owed, reading: false)
            context.fireChannelRead(wrapInboundOut(part))
        case (.passing, .body), (.idle, _), (.reading, .head), (.waiting, _):
            // The decoder sends head, body, end in turn, and nothing is handled while waiting:
            // only Hummingbird can make sense of anything else.
            context.fireChannelRead(wrapInboundOut(part))
        }
    }

    /// Answers `Expect: 100-continue` with `100 Continue`, so that a client waiting for it
    /// (curl does, for bodies over 1 MiB) sends its body at once instead of after its own
    /// timeout (a second, for curl). A body too large for the route is refused with 413
    /// before this. Requests that arrive while a response is owed do not get one: it would
    /// overtake that response.
    private func continueIfExpected(_ fields: ReadFields, context: ChannelHandlerContext) {
        guard fields.expectsContinue else { return }
        context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
    }

    /// The request header fields this handler reads, found in one walk over them (looking each
    /// up in `HTTPFields` builds an index of every name at the first lookup, and hashes the name
    /// at each). A repeated field's values are joined with ", ", as `HTTPFields` joins them.
    struct ReadFields {
        var contentLength: String?
        var expect: String?
        var requestID: String?
        var traceparent: String?
        var connection: String?

        init(_ fields: HTTPFields) {
            for field in fields {
                // By length first: most names are none of these, and then no string is compared.
                switch field.name.canonicalName.utf8.count {
                case 6 where field.name == .expect: Self.join(&expect, field.value)
                case 10 where field.name == .connection: Self.join(&connection, field.value)
                case 11 where field.name == .traceparent: Self.join(&traceparent, field.value)
                case 12 where field.name == .xRequestID: Self.join(&requestID, field.value)
                case 14 where field.name == .contentLength: Self.join(&contentLength, field.value)
                default: break
                }
            }
        }

        private static func join(_ values: inout String?, _ value: String) {
            values = values.map { $0 + ", " + value } ?? value
        }

        var expectsContinue: Bool { expect?.lowercased() == "100-continue" }
    }

    /// The request served here, or nil when its route is not a request/reply one.
    private func accept(_ head: HTTPRequest, _ fields: ReadFields) -> Accepted? {
        let uri = URI(head.path ?? "")
        guard let (route, parameters) = configuration.route(method: head.method, path: uri.path) else { return nil }
        return Accepted(
            head: head,
            uri: uri,
            route: route,
            parameters: parameters,
            requestID: RequestIdentity.requestID(from: fields.requestID),
            traceparent: RequestIdentity.traceparent(from: fields.traceparent),
            // ``HTTP1ProtocolHandler`` below sends every request that does not keep the
            // connection alive (HTTP/1.0, `close` among other tokens) up with exactly this.
            close: fields.connection == "close"
        )
    }

    /// Publishes a complete request; its outcome comes back on the event loop.
    private func send(_ accepted: Accepted, body: ByteBuffer) {
        guard let context else { return }
        let request = GatewayRequest(
            head: accepted.head,
            uri: accepted.uri,
            route: accepted.route,
            parameters: accepted.parameters,
            body: body,
            requestID: accepted.requestID,
            traceparent: accepted.traceparent
        )
        let loop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: loop)
        if accepted.route.shape == .aggregate, let aggregate = configuration.aggregate {
            aggregate(request, loop, taskExecutor(on: loop)) { result in
                handler.value.replied(result)
            }
            return
        }
        configuration.send(request) { result in
            loop.execute {
                handler.value.replied(result)
            }
        }
    }

    /// The executor for this connection's tasks, made once.
    private func taskExecutor(on loop: any EventLoop) -> EventLoopTaskExecutor {
        if let executor { return executor }
        let made = EventLoopTaskExecutor(eventLoop: loop)
        executor = made
        return made
    }

    private func replied(_ result: Result<GatewayReply, GatewayError>) {
        // The connection closed meanwhile: there is no one to answer.
        guard let context, case .waiting(let accepted) = state else { return }
        state = .idle
        respond(to: accepted, with: result.mapError { $0 as any Error }, close: accepted.close, context: context)
        resumeReading(context: context)
    }

    /// After a response: handles what was held, in order, until a response is owed again;
    /// then reads on if nothing is.
    private func resumeReading(context: ChannelHandlerContext) {
        // A request answered at once (a 413) among the held ones ends in here again.
        guard !replaying else { return }
        replaying = true
        defer { replaying = false }
        while !isOwing, let part = held.popFirst() {
            handle(part, context: context)
        }
        if !isOwing, held.isEmpty, let error = heldError {
            heldError = nil
            errorCaught(context: context, error: error)
        }
        if !isOwing, held.isEmpty, inputClosedHeld {
            inputClosedHeld = false
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            return
        }
        if readDeferred && held.isEmpty {
            readDeferred = false
            context.read()
        }
    }

    /// A response is owed here: what arrives now must wait for it.
    private var isOwing: Bool {
        if case .waiting = state { return true }
        return false
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        if !held.isEmpty || inputClosedHeld {
            readDeferred = true
        } else {
            context.read()
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Hummingbird's responses: count the ones it still owes.
        if case .end = unwrapOutboundIn(data), case .passing(let owed, let reading) = state {
            state = owed <= 1 && !reading ? .idle : .passing(owed: max(owed - 1, 0), reading: reading)
        }
        context.write(data, promise: promise)
    }

    // MARK: Responses

    /// Writes the response for a reply or an error, as the middleware would.
    private func respond(to accepted: Accepted, with result: Result<GatewayReply, any Error>, close: Bool, context: ChannelHandlerContext) {
        var status: HTTPResponse.Status
        var fields: HTTPFields
        let body: ByteBuffer
        switch result {
        case .success(let reply):
            status = .init(code: reply.status)
            fields = Self.fields(of: reply, serverName: configuration.serverName)
            body = reply.body
        case .failure(let error):
            let problem = ProblemResponse.gatewayError(for: error, instance: accepted.uri.path)
            status = .init(code: problem.status)
            fields = ProblemResponse.headers(problem)
            body = ProblemResponse.body(problem, instance: accepted.uri.path, requestID: accepted.requestID)
        }
        // None of these is among the fields above (``fields(of:)``), so they are appended
        // without a search for an earlier value.
        fields.append(HTTPField(name: .contentLength, value: String(body.readableBytes)))
        fields.append(HTTPField(name: .xRequestID, value: accepted.requestID))
        fields.append(HTTPField(name: .date, value: currentDate()))
        if let serverName = configuration.serverName { fields.append(HTTPField(name: .server, value: serverName)) }
        if close { fields.append(HTTPField(name: .connection, value: "close")) }
        context.write(wrapOutboundOut(.head(HTTPResponse(status: status, headerFields: fields))), promise: nil)
        // A HEAD request's response says how long the body would be, without it.
        if body.readableBytes > 0 && accepted.head.method != .head {
            context.write(wrapOutboundOut(.body(body)), promise: nil)
        }
        if close {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        } else {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    /// A reply's fields (``GatewayReply/httpHeaders``) without those the edge sets on every
    /// response: a worker's `X-Request-ID`, `Date` or `Server` (when the edge names itself)
    /// gives way to the edge's, as the middleware's setting them would replace it. The framing
    /// fields never come from a worker's reply (they are dropped as hop-by-hop), but an
    /// aggregate's names are its legs' keys joined to their headers' names, and a leg keyed
    /// `content` keeping `length` would make one.
    static func fields(of reply: GatewayReply, serverName: String?) -> HTTPFields {
        reply.httpFields(extraCapacity: 5) { name in
            // By length first: most names are none of these, and then no string is compared.
            switch name.canonicalName.utf8.count {
            case 4: return name == .date
            case 6: return serverName != nil && name == .server
            case 10: return name == .connection
            case 12: return name == .xRequestID
            case 14: return name == .contentLength
            case 17: return name == .transferEncoding
            default: return false
            }
        }
    }

    /// The `Date` header's value, formatted at most once a second per connection.
    private func currentDate() -> String {
        let now = Int(time(nil))
        if now != date.second {
            date = (now, HTTPDate.format(secondsSinceEpoch: now))
        }
        return date.value
    }
}
