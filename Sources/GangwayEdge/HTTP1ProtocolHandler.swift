import GangwayCore
import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1

/// What the HTTP/1 server needs where the version-free HTTP types above it cannot see it: the
/// answer to a request that does not parse, and HTTP/1.0's connection rules. It sits right
/// above the decoder, where NIO's `HTTPServerProtocolErrorHandler` would, and it also turns
/// NIO's HTTP/1 parts into the version-free ones that the handlers above read and write, and
/// back (what NIO's `HTTP1ToHTTPServerCodec` does): one handler fewer for every part of every
/// request and response to pass through.
///
/// **Requests that do not parse** get a problem JSON body, as every other error is answered:
/// 431 when their header fields pass the decoder's limits, 400 otherwise; then the connection
/// closes, as nothing after such a request can be read. (Without this, Hummingbird answers
/// with an empty 400.) A pipelined request that cannot be parsed is answered after the
/// responses to the requests before it, in order. An error inside a request whose head was
/// read already (a malformed chunked body) is passed on to the handler reading that body. An
/// HTTP/1.1 request without exactly one `Host` header field is refused the same way, with 400,
/// as RFC 9112 asks; so is a request with a header field value that is not UTF-8 (RFC 9110's
/// obs-text, such as ISO-8859-1 bytes). The decoder reads every value as UTF-8 text and puts
/// U+FFFD in place of what is not, so such a value would reach a worker, or an idempotency key,
/// altered, and two different values could become one; the client is told instead. (A value
/// that holds U+FFFD itself, as UTF-8, cannot be told apart and is refused too.) A request
/// whose `Transfer-Encoding` names any coding but `chunked` (`gzip, chunked`, say) gets 501, as
/// RFC 9112 asks: the decoder would take away the chunked framing only, and pass the body on
/// still compressed as if it were the request's bytes.
///
/// **Connections** the request does not keep alive close after the response. Above this
/// handler a request has no version, and Hummingbird (and ``RequestReplyChannelHandler``)
/// close a connection only on `Connection: close`; so a request that does not keep the
/// connection alive (HTTP/1.0 without `Connection: keep-alive`, or `close` among other
/// `Connection` tokens) goes up with exactly `Connection: close`, and its response says
/// `Connection: close`, as RFC 9112 asks. An HTTP/1.0 request's response is an HTTP/1.0 one:
/// never chunked (a body without a length ends when the connection closes) and, when the
/// connection stays open, saying `Connection: keep-alive`. HTTP/1.0 knows no
/// `Expect: 100-continue`, so the expectation is dropped, as RFC 9110 asks.
final class HTTP1ProtocolHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxHeaderBytes: Int
    private let requestID: @Sendable () -> String
    /// What each request read whose response has not ended yet needs of it, oldest first.
    private var owed = CircularBuffer<Owed>(initialCapacity: 4)
    /// The response being written is an HTTP/1.0 one without a length to a request that asked
    /// for keep-alive: only the close can end its body, once the response's end is written.
    private var closeAfterResponse = false
    /// A request head was read and its end not yet.
    private var readingRequest = false
    /// The answer to a request that could not be parsed, held until the responses before it end.
    private var held: GatewayError?
    /// A request was refused here: nothing read after it goes up, and the connection closes
    /// once it is answered.
    private var refusing = false

    init(maxHeaderBytes: Int, requestID: @escaping @Sendable () -> String = { RequestIdentity.requestID(from: nil) }) {
        self.maxHeaderBytes = maxHeaderBytes
        self.requestID = requestID
    }

    struct Owed {
        var http10: Bool
        var keepAlive: Bool
        var isHead: Bool
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refusing else { return }
        switch unwrapInboundIn(data) {
        case .head(var head):
            readingRequest = true
            let fields = FieldScan(head.headers)
            if head.version != .http1_0, fields.hosts != 1 {
                let detail = fields.hosts == 0 ? "an HTTP/1.1 request must carry a Host header field" : "the request carries \(fields.hosts) Host header fields, where HTTP/1.1 allows one"
                refuse(.badRequest(detail), context: context)
                return
            }
            if let name = fields.notUTF8 {
                refuse(.badRequest("the value of header field '\(name)' is not UTF-8 text, and the edge would have to alter it"), context: context)
                return
            }
            if fields.hasTransferEncoding, let codings = Self.unsupportedTransferCoding(head.headers) {
                refuse(.notImplemented("the request's transfer coding '\(codings)' is not supported: send the body as it is, with Content-Length or Transfer-Encoding: chunked"), context: context)
                return
            }
            let http10 = head.version == .http1_0
            let keepAlive = head.isKeepAlive
            if http10 || !keepAlive {
                if !keepAlive && head.headers["connection"] != ["close"] {
                    head.headers.replaceOrAdd(name: "connection", value: "close")
                }
                if http10 {
                    head.headers.remove(name: "expect")
                }
            }
            guard let request = Self.request(head) else {
                refuse(.badRequest("the request's method '\(head.method.rawValue)' is not an HTTP token"), context: context)
                return
            }
            owed.append(Owed(http10: http10, keepAlive: keepAlive, isHead: head.method == .HEAD))
            context.fireChannelRead(wrapInboundOut(.head(request)))
        case .body(let body):
            context.fireChannelRead(wrapInboundOut(.body(body)))
        case .end(let trailers):
            readingRequest = false
            context.fireChannelRead(wrapInboundOut(.end(trailers.map { HTTPFields($0, splitCookie: false) })))
        }
    }

    /// `head` as a version-free request, as NIO's `HTTPRequest(_:secure:splitCookie:)` makes it
    /// (the first `Host` field becomes the authority and leaves the fields; the scheme is
    /// `http`, as the edge's codec always said), or nil when its method is not a token. A target
    /// in origin form (`/path?query`, nearly every request) is the path as it is, which NIO's
    /// conversion finds only after parsing it as a URL; any other form goes through NIO's.
    static func request(_ head: HTTPRequestHead) -> HTTPRequest? {
        guard head.uri.utf8.first == UInt8(ascii: "/") else {
            return try? HTTPRequest(head, secure: false, splitCookie: false)
        }
        guard let method = try? HTTPRequest.Method(head.method) else { return nil }
        var fields = HTTPFields()
        fields.reserveCapacity(head.headers.count)
        var authority: String?
        for header in head.headers {
            if authority == nil, header.name.utf8.count == 4, FieldScan.equalsIgnoringCase(header.name, "host") {
                authority = header.value
                continue
            }
            // The decoder reads only token names, which are all valid field names.
            if let name = HTTPField.Name(header.name) {
                fields.append(HTTPField(name: name, value: header.value))
            }
        }
        return HTTPRequest(method: method, scheme: "http", authority: authority, path: head.uri, headerFields: fields)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard !refusing else { return }
        guard let parseError = error as? HTTPParserError, !readingRequest, held == nil else {
            context.fireErrorCaught(error)
            return
        }
        // Not passed on: this handler answers it, and the handlers above would answer it again.
        refuse(Self.problem(for: parseError, maxHeaderBytes: maxHeaderBytes), context: context)
    }

    /// Answers `problem` once the responses owed before it have ended, then closes; nothing read
    /// from now on goes up.
    private func refuse(_ problem: GatewayError, context: ChannelHandlerContext) {
        refusing = true
        if owed.isEmpty {
            answer(problem, context: context)
        } else {
            held = problem
        }
    }

    /// What a request's header fields hold that the checks above need, found in one walk over
    /// them: how many `Host` fields there are (RFC 9112 asks for exactly one in HTTP/1.1), the
    /// name of the first field whose value the decoder could not read as UTF-8 (it holds
    /// U+FFFD, EF BF BD, which the decoder puts in place of bytes that are not), and whether
    /// there is a `Transfer-Encoding`.
    struct FieldScan {
        var hosts = 0
        var notUTF8: String?
        var hasTransferEncoding = false

        init(_ headers: HTTPHeaders) {
            for header in headers {
                switch header.name.utf8.count {
                case 4 where Self.equalsIgnoringCase(header.name, "host"): hosts += 1
                case 17 where Self.equalsIgnoringCase(header.name, "transfer-encoding"): hasTransferEncoding = true
                default: break
                }
                if notUTF8 == nil, Self.holdsReplacementCharacter(header.value) { notUTF8 = header.name }
            }
        }

        static func equalsIgnoringCase(_ name: String, _ lowercase: StaticString) -> Bool {
            lowercase.withUTF8Buffer { name.utf8.elementsEqual($0, by: { $0 | 0x20 == $1 }) }
        }

        private static func holdsReplacementCharacter(_ value: String) -> Bool {
            var value = value
            return value.withUTF8 { bytes in
                guard bytes.count >= 3 else { return false }
                for i in 0..<(bytes.count - 2) where bytes[i] == 0xEF && bytes[i + 1] == 0xBF && bytes[i + 2] == 0xBD {
                    return true
                }
                return false
            }
        }
    }

    /// The request's `Transfer-Encoding`, as sent, when it names any coding but `chunked`;
    /// nil when it has none or names `chunked` alone.
    static func unsupportedTransferCoding(_ headers: HTTPHeaders) -> String? {
        let values = headers["transfer-encoding"]
        guard !values.isEmpty else { return nil }
        let isSpace = { (c: Character) in c == " " || c == "\t" }
        let codings = values.flatMap { $0.split(separator: ",") }.compactMap { coding -> String? in
            guard let first = coding.firstIndex(where: { !isSpace($0) }), let last = coding.lastIndex(where: { !isSpace($0) }) else { return nil }
            return coding[first...last].lowercased()
        }
        return codings == ["chunked"] ? nil : values.joined(separator: ", ")
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let newResponse):
            var response = HTTPResponseHead(newResponse)
            // An informational response (100 Continue) is not the request's answer.
            if let request = owed.first, request.http10 || !request.keepAlive, response.status.code >= 200 {
                if request.http10 { response.version = .http1_0 }
                let framed = !request.http10 || request.isHead || !response.status.mayHaveResponseBody || response.headers.contains(name: "content-length")
                // The handlers above close the connection after a request that said close; one
                // that asked for keep-alive and gets a body that only the close can end is
                // closed here.
                closeAfterResponse = request.keepAlive && !framed
                let keptAlive = request.keepAlive && framed
                response.headers.replaceOrAdd(name: "connection", value: keptAlive ? "keep-alive" : "close")
            }
            context.write(wrapOutboundOut(.head(response)), promise: promise)
        case .body(let body):
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: promise)
        case .end(let trailers):
            ended(wrapOutboundOut(.end(trailers.map(HTTPHeaders.init))), promise: promise, context: context)
        }
    }

    /// Writes a response's end, then answers a request that could not be parsed if it was waiting
    /// for this one, or closes the connection if the response says so.
    private func ended(_ end: NIOAny, promise: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
        _ = owed.popFirst()
        if closeAfterResponse {
            closeAfterResponse = false
            let written = promise ?? context.eventLoop.makePromise()
            context.write(end, promise: written)
            let channel = context.channel
            written.futureResult.whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.write(end, promise: promise)
        if owed.isEmpty, let problem = held {
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
            return .headersTooLarge("the request's target (its path and query) and header fields pass the edge's limit\(limit)")
        default:
            return .badRequest("the request is not valid HTTP/1.1 (\(error))")
        }
    }
}
