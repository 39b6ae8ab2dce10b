import GangwayCore
import NIOCore
import NIOHTTP1

/// Answers a request the HTTP/1 decoder cannot parse with a problem JSON body, as every other
/// error is answered: 431 when its header fields pass the decoder's limits, 400 otherwise; then
/// closes the connection, as nothing after a request that cannot be parsed can be read.
///
/// Without it, Hummingbird answers such a request with an empty 400. It sits right above the
/// decoder, where NIO's `HTTPServerProtocolErrorHandler` would. A pipelined request that cannot
/// be parsed is answered after the responses to the requests before it, in order. An error
/// inside a request whose head was read already (a malformed chunked body) is passed on to
/// the handler reading that body, as before.
final class ParseErrorProblemHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxHeaderBytes: Int
    private let requestID: @Sendable () -> String
    /// Requests read whose response has not ended yet.
    private var unanswered = 0
    /// A request head was read and its end not yet.
    private var readingRequest = false
    /// The answer to a request that could not be parsed, held until the responses before it end.
    private var held: GatewayError?

    init(maxHeaderBytes: Int, requestID: @escaping @Sendable () -> String = { RequestIdentity.requestID(from: nil) }) {
        self.maxHeaderBytes = maxHeaderBytes
        self.requestID = requestID
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            unanswered += 1
            readingRequest = true
        case .end:
            readingRequest = false
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parseError = error as? HTTPParserError, !readingRequest, held == nil else {
            context.fireErrorCaught(error)
            return
        }
        // Not passed on: this handler answers it, and the handlers above would answer it again.
        let problem = Self.problem(for: parseError, maxHeaderBytes: maxHeaderBytes)
        if unanswered == 0 {
            answer(problem, context: context)
        } else {
            held = problem
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let ended: Bool
        switch unwrapOutboundIn(data) {
        case .end: ended = true
        case .head, .body: ended = false
        }
        context.write(data, promise: promise)
        guard ended else { return }
        unanswered = max(0, unanswered - 1)
        if unanswered == 0, let problem = held {
            held = nil
            answer(problem, context: context)
        }
    }

    /// Writes the problem response, then closes the connection once it is written.
    private func answer(_ problem: GatewayError, context: ChannelHandlerContext) {
        let id = requestID()
        let body = ProblemResponse.body(problem, instance: nil, requestID: id)
        let headers = HTTPHeaders([
            ("Content-Type", ProblemResponse.contentType),
            ("Content-Length", String(body.readableBytes)),
            ("Connection", "close"),
            ("X-Request-ID", id),
        ])
        let head = HTTPResponseHead(version: .http1_1, status: .init(statusCode: problem.status), headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let written = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: written)
        let channel = context.channel
        written.futureResult.whenComplete { _ in channel.close(promise: nil) }
    }

    /// What the client is told about a request the decoder refused.
    static func problem(for error: HTTPParserError, maxHeaderBytes: Int?) -> GatewayError {
        switch error {
        case .headerOverflow:
            let limit = maxHeaderBytes.map { " of \($0) bytes in all" } ?? ""
            return .headersTooLarge("the request's header fields pass the edge's limit\(limit)")
        default:
            return .badRequest("the request is not valid HTTP/1.1 (\(error))")
        }
    }
}
