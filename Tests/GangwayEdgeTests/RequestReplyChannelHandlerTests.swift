import GangwayConfig
import GangwayCore
@testable import GangwayEdge
import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import Synchronization
import Testing

/// The requests the handler sent, each with the callback that answers it.
final class SentRequests: Sendable {
    typealias Completion = @Sendable (Result<GatewayReply, GatewayError>) -> Void
    private let sent = Mutex<[(request: GatewayRequest, completion: Completion)]>([])

    var count: Int { sent.withLock { $0.count } }
    func request(_ index: Int) -> GatewayRequest { sent.withLock { $0[index].request } }

    func record(_ request: GatewayRequest, _ completion: @escaping Completion) {
        sent.withLock { $0.append((request, completion)) }
    }

    /// Answers request `index`, as the correlator would from the consumer's thread.
    func answer(_ index: Int, _ result: Result<GatewayReply, GatewayError>) {
        let completion = sent.withLock { $0[index].completion }
        completion(result)
    }
}

/// Counts the `inputClosed` events that reach the channel's end of the pipeline.
final class EventRecorder: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    var inputClosed = 0

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { inputClosed += 1 }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Counts the reads that reach the socket's end of the pipeline.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    var reads = 0

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

@Suite("Request/reply served in the connection's pipeline")
struct RequestReplyChannelHandlerTests {
    static func routes() throws -> RouteTable {
        func route(_ name: String, _ method: String, _ path: String, shape: Route.Shape = .requestReply) throws -> Route {
            Route(
                name: name, method: method, path: try PathTemplate(path), shape: shape, exchange: "gangway.rpc",
                routingKey: try KeyTemplate("demo.\(name)"), queue: try KeyTemplate("demo.\(name)"),
                timeoutMilliseconds: 1000, forwardHeaders: ["x-demo"], maxBodyBytes: 16
            )
        }
        return RouteTable(routes: [
            try route("echo", "POST", "/v1/echo/{id}"),
            try route("time", "GET", "/v1/time"),
            try route("count", "POST", "/v1/count", shape: .stream),
            try route("jobish", "GET", "/v1/jobs/{id}"),
            try route("both", "GET", "/v1/both", shape: .aggregate),
        ])
    }

    /// The handler between a read counter (the socket's side) and the channel's end (where
    /// Hummingbird's async channel would be).
    static func channel(
        aggregate: (@Sendable (GatewayRequest, any EventLoop, any TaskExecutor, @escaping @Sendable (Result<GatewayReply, GatewayError>) -> Void) -> Void)? = nil
    ) throws -> (EmbeddedChannel, SentRequests, ReadCounter) {
        let sent = SentRequests()
        let configuration = RequestReplyChannelHandler.Configuration(
            routes: try routes(),
            reservedPaths: ["/healthz"],
            reservedPrefixes: ["/v1/jobs/"],
            serverName: "gangway-test",
            send: { request, completion in sent.record(request, completion) },
            aggregate: aggregate
        )
        let reads = ReadCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(reads)
        try channel.pipeline.syncOperations.addHandler(RequestReplyChannelHandler(configuration: configuration))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080)).wait()
        return (channel, sent, reads)
    }

    static func head(_ method: HTTPRequest.Method, _ path: String, _ fields: HTTPFields = [:]) -> HTTPRequestPart {
        .head(HTTPRequest(method: method, scheme: nil, authority: "x", path: path, headerFields: fields))
    }

    static func reply(_ body: String, status: Int = 200) -> GatewayReply {
        GatewayReply(status: status, headers: [("location", "/x/1")], contentType: "text/plain", contentEncoding: nil, body: ByteBuffer(string: body))
    }

    /// A whole response written by the handler, or nil when none is (complete) in the outbound.
    static func response(_ channel: EmbeddedChannel) throws -> (head: HTTPResponse, body: String)? {
        guard case .head(let head)? = try channel.readOutbound(as: HTTPResponsePart.self) else { return nil }
        var body = ""
        while let part = try channel.readOutbound(as: HTTPResponsePart.self) {
            switch part {
            case .body(let bytes): body += String(buffer: bytes)
            case .end: return (head, body)
            case .head: Issue.record("a second head before the end")
            }
        }
        Issue.record("a response without an end")
        return nil
    }

    @Test("a request/reply route is published from the pipeline and its reply written back")
    func servesRequestReply() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.post, "/v1/echo/a?q=1", [.contentType: "text/plain", .init("X-Demo")!: "1", .init("X-Request-ID")!: "rid-1"]))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: "hel")))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: "lo")))
        #expect(sent.count == 0, "published only once the body is in")
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(sent.count == 1)
        let request = sent.request(0)
        #expect(request.route.name == "echo" && request.parameters == ["id": "a"])
        #expect(request.path == "/v1/echo/a" && request.query == "q=1" && request.method == "POST")
        #expect(String(buffer: request.body) == "hello")
        #expect(request.requestID == "rid-1" && request.header("x-demo") == "1")
        #expect(request.traceparent.hasPrefix("00-") && request.traceparent.count == 55)
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == nil, "nothing reaches Hummingbird")

        sent.answer(0, .success(Self.reply("hi there", status: 201)))
        channel.embeddedEventLoop.run()
        let response = try #require(try Self.response(channel))
        #expect(response.head.status.code == 201 && response.body == "hi there")
        #expect(response.head.headerFields[.contentType] == "text/plain")
        #expect(response.head.headerFields[.contentLength] == "8")
        #expect(response.head.headerFields[.location] == "/x/1")
        #expect(response.head.headerFields[.xRequestID] == "rid-1")
        #expect(response.head.headerFields[.server] == "gangway-test")
        #expect(response.head.headerFields[.date]?.hasSuffix(" GMT") == true)
        #expect(response.head.headerFields[.connection] == nil)
        #expect(channel.isActive)
    }

    @Test("fields the edge sets on every response give way to the edge's when a reply carries them too, each once")
    func edgeFieldsWin() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.post, "/v1/echo/a", [.init("X-Request-ID")!: "rid-2"]))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        let reply = GatewayReply(
            status: 200,
            headers: [
                ("x-request-id", "from-worker"), ("date", "Thu, 01 Jan 1970 00:00:00 GMT"), ("server", "worker"),
                // An aggregate's names are leg keys joined to header names: a leg keyed
                // "content" keeping "length" makes this one.
                ("content-length", "999"), ("connection", "upgrade"), ("transfer-encoding", "chunked"),
                ("x-kept", "1"), ("x-kept", "2"),
            ],
            contentType: "text/plain",
            contentEncoding: "identity",
            body: ByteBuffer(string: "abc")
        )
        sent.answer(0, .success(reply))
        channel.embeddedEventLoop.run()
        let response = try #require(try Self.response(channel))
        let fields = response.head.headerFields
        #expect(fields[values: .xRequestID] == ["rid-2"])
        #expect(fields[values: .server] == ["gangway-test"])
        #expect(fields[values: .date].count == 1 && fields[.date] != "Thu, 01 Jan 1970 00:00:00 GMT")
        #expect(fields[values: .contentLength] == ["3"])
        #expect(fields[values: .connection].isEmpty && fields[values: .transferEncoding].isEmpty)
        #expect(fields[values: .init("x-kept")!] == ["1", "2"])
        #expect(fields[.contentType] == "text/plain" && fields[.contentEncoding] == "identity")
        #expect(response.body == "abc")

        // An edge that does not name itself (no Server of its own) passes a worker's on.
        let unnamed = RequestReplyChannelHandler.fields(of: reply, serverName: nil)
        #expect(unnamed[values: .server] == ["worker"])
        #expect(unnamed[values: .xRequestID].isEmpty && unnamed[values: .date].isEmpty && unnamed[values: .contentLength].isEmpty)
    }

    @Test("a failure is a problem JSON response with the request's id")
    func failureIsProblem() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        sent.answer(0, .failure(.timeout(route: "time", milliseconds: 1000)))
        channel.embeddedEventLoop.run()
        let response = try #require(try Self.response(channel))
        #expect(response.head.status.code == 504)
        #expect(response.head.headerFields[.contentType] == "application/problem+json")
        let id = try #require(response.head.headerFields[.xRequestID])
        #expect(id.count == 32, "a request id is made when the client sends none")
        #expect(response.body.contains(#""status":504"#) && response.body.contains(#""instance":"/v1/time""#))
        #expect(response.body.contains(#""request_id":"\#(id)""#))
    }

    @Test("other requests go up to Hummingbird untouched: other shapes, reserved paths and prefixes, unknown paths, wrong methods")
    func passesOthers() throws {
        for (method, path) in [
            (HTTPRequest.Method.post, "/v1/count"), (.get, "/healthz"), (.get, "/v1/jobs/abc"), (.get, "/nowhere"), (.get, "/v1/echo/a"),
        ] {
            let (channel, sent, _) = try Self.channel()
            try channel.writeInbound(Self.head(method, path))
            try channel.writeInbound(HTTPRequestPart.end(nil))
            guard case .head(let head)? = try channel.readInbound(as: HTTPRequestPart.self) else {
                Issue.record("\(method) \(path) did not reach Hummingbird")
                continue
            }
            #expect(head.path == path)
            #expect(try channel.readInbound(as: HTTPRequestPart.self) == .end(nil))
            #expect(sent.count == 0)
        }
    }

    @Test("a pipelined request waits for the response before it: reading stops once it is held, then goes on")
    func pipelinedAfterOwnResponse() throws {
        let (channel, sent, reads) = try Self.channel()
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        var readsBefore = reads.reads
        channel.read()
        #expect(reads.reads == readsBefore + 1, "a response owed and nothing held: reading goes on")
        // The client pipelines one request for Hummingbird and one for the handler.
        try channel.writeInbound(Self.head(.get, "/healthz"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == nil, "held until the first response is out")
        #expect(sent.count == 1)
        readsBefore = reads.reads
        channel.read()
        #expect(reads.reads == readsBefore, "no reading while requests are held")

        sent.answer(0, .success(Self.reply("one")))
        channel.embeddedEventLoop.run()
        #expect(try Self.response(channel)?.body == "one")
        guard case .head(let health)? = try channel.readInbound(as: HTTPRequestPart.self) else {
            Issue.record("the held request did not go on to Hummingbird")
            return
        }
        #expect(health.path == "/healthz")
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == .end(nil))
        // Hummingbird owes a response: the request after it goes to Hummingbird too, in order.
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == Self.head(.get, "/v1/time"))
        #expect(sent.count == 1)
        #expect(reads.reads == readsBefore + 1, "the deferred read goes out once nothing is owed here")
    }

    @Test("the client's end of input while a response is owed is passed on after the response")
    func halfCloseWaitsForResponse() throws {
        let (channel, sent, _) = try Self.channel()
        let events = EventRecorder()
        try channel.pipeline.syncOperations.addHandler(events)
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(events.inputClosed == 0, "held while the response is owed")
        sent.answer(0, .success(Self.reply("one")))
        channel.embeddedEventLoop.run()
        #expect(try Self.response(channel)?.body == "one")
        #expect(events.inputClosed == 1, "passed on once the response is written")
        // With nothing owed, it goes on at once.
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(events.inputClosed == 2)
    }

    @Test("while Hummingbird owes a response every request goes to it; once it has answered, the handler serves again")
    func hummingbirdFirst() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.get, "/healthz"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        for expected in [Self.head(.get, "/healthz"), .end(nil), Self.head(.get, "/v1/time"), .end(nil)] {
            #expect(try channel.readInbound(as: HTTPRequestPart.self) == expected)
        }
        #expect(sent.count == 0)
        // Hummingbird answers both.
        for _ in 0..<2 {
            channel.write(HTTPResponsePart.head(HTTPResponse(status: .ok)), promise: nil)
            channel.write(HTTPResponsePart.end(nil), promise: nil)
        }
        channel.flush()
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(sent.count == 1, "served here once Hummingbird owes nothing")
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == nil)
    }

    @Test("Hummingbird answering before the request's body is in: the rest of the body still goes to it")
    func hummingbirdAnswersEarly() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.post, "/nowhere"))
        channel.write(HTTPResponsePart.head(HTTPResponse(status: .notFound)), promise: nil)
        channel.writeAndFlush(HTTPResponsePart.end(nil), promise: nil)
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: "late")))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == Self.head(.post, "/nowhere"))
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == .body(ByteBuffer(string: "late")))
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == .end(nil))
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(sent.count == 1)
    }

    @Test("a body past the route's limit is a 413 at once, by Content-Length or as it arrives; the rest is dropped and the connection serves on")
    func bodyTooLarge() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.post, "/v1/echo/a", [.contentLength: "17"]))
        var response = try #require(try Self.response(channel))
        #expect(response.head.status.code == 413 && response.body.contains("16 bytes"))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x61, count: 17)))
        try channel.writeInbound(HTTPRequestPart.end(nil))

        try channel.writeInbound(Self.head(.post, "/v1/echo/a"))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x61, count: 10)))
        #expect(try Self.response(channel) == nil)
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x61, count: 7)))
        response = try #require(try Self.response(channel))
        #expect(response.head.status.code == 413)
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x61, count: 7)))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(sent.count == 0 && channel.isActive)
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == nil)

        try channel.writeInbound(Self.head(.post, "/v1/echo/a", [.contentLength: "16"]))
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(repeating: 0x61, count: 16)))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(sent.count == 1 && sent.request(0).body.readableBytes == 16, "a body of exactly the limit goes through")
    }

    @Test("Connection: close is answered with Connection: close, then the connection closes")
    func connectionClose() throws {
        let (channel, sent, _) = try Self.channel()
        // As HTTP1ProtocolHandler sends up any request that does not keep the connection alive.
        try channel.writeInbound(Self.head(.get, "/v1/time", [.connection: "close"]))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        sent.answer(0, .success(Self.reply("bye")))
        channel.embeddedEventLoop.run()
        let response = try #require(try Self.response(channel))
        #expect(response.head.headerFields[.connection] == "close")
        #expect(!channel.isActive)
    }

    @Test("a reply for a connection that closed meanwhile is dropped")
    func replyAfterClose() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        try channel.close().wait()
        sent.answer(0, .success(Self.reply("late")))
        channel.embeddedEventLoop.run()
        #expect(try channel.readOutbound(as: HTTPResponsePart.self) == nil)
    }
    @Test("an aggregate route is answered like a reply, and a task it needs runs on the connection's loop; without an aggregate runner it goes to Hummingbird")
    func aggregate() throws {
        let (channel, sent, _) = try Self.channel(aggregate: { request, loop, executor, completion in
            Task(executorPreference: executor) {
                #expect(loop.inEventLoop)
                completion(.success(Self.reply("{\"route\":\"\(request.route.name)\"}")))
            }
        })
        try channel.writeInbound(Self.head(.get, "/v1/both"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        // The task's jobs and then the response's write are queued on the embedded loop.
        channel.embeddedEventLoop.run()
        let response = try Self.response(channel)
        #expect(response?.body == #"{"route":"both"}"#)
        #expect(sent.count == 0)
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == nil)

        let (other, _, _) = try Self.channel(aggregate: nil)
        try other.writeInbound(Self.head(.get, "/v1/both"))
        #expect(try other.readInbound(as: HTTPRequestPart.self) == Self.head(.get, "/v1/both"))
    }
    @Test("Expect: 100-continue gets 100 Continue before the body, unless the body is refused at once")
    func expectContinue() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.post, "/v1/echo/a", [.expect: "100-continue", .contentLength: "2"]))
        guard case .head(let interim)? = try channel.readOutbound(as: HTTPResponsePart.self) else {
            Issue.record("no interim response")
            return
        }
        #expect(interim.status == .continue)
        try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: "ok")))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        sent.answer(0, .success(Self.reply("ok")))
        channel.embeddedEventLoop.run()
        #expect(try Self.response(channel)?.head.status == .ok)

        // A request for Hummingbird, with nothing owed before it, gets one too.
        try channel.writeInbound(Self.head(.post, "/nowhere", [.expect: "100-continue"]))
        guard case .head(let passed)? = try channel.readOutbound(as: HTTPResponsePart.self) else {
            Issue.record("no interim response for a request going to Hummingbird")
            return
        }
        #expect(passed.status == .continue)
        try channel.writeInbound(HTTPRequestPart.end(nil))
        channel.write(HTTPResponsePart.head(HTTPResponse(status: .notFound)), promise: nil)
        channel.writeAndFlush(HTTPResponsePart.end(nil), promise: nil)
        _ = try Self.response(channel)

        // Too large by its Content-Length: the 413 instead of a 100, and the connection closes,
        // as the client may never send the body.
        try channel.writeInbound(Self.head(.post, "/v1/echo/a", [.expect: "100-continue", .contentLength: "100"]))
        let refused = try #require(try Self.response(channel))
        #expect(refused.head.status.code == 413 && refused.head.headerFields[.connection] == "close")
        channel.embeddedEventLoop.run()
        #expect(!channel.isActive)
    }
    @Test("an error the decoder raises while a response is owed waits for that response")
    func heldError() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.get, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        // A pipelined request for Hummingbird, whose chunked body turns out malformed.
        try channel.writeInbound(Self.head(.post, "/nowhere"))
        channel.pipeline.fireErrorCaught(HTTPParserError.invalidChunkSize)
        #expect(throws: Never.self) { try channel.throwIfErrorCaught() }
        sent.answer(0, .success(Self.reply("first")))
        channel.embeddedEventLoop.run()
        #expect(try Self.response(channel)?.body == "first")
        #expect(try channel.readInbound(as: HTTPRequestPart.self) == Self.head(.post, "/nowhere"))
        #expect(throws: HTTPParserError.self) { try channel.throwIfErrorCaught() }
    }
    @Test("HEAD on a GET route: the reply's length without its body")
    func head() throws {
        let (channel, sent, _) = try Self.channel()
        try channel.writeInbound(Self.head(.head, "/v1/time"))
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(sent.request(0).method == "HEAD")
        sent.answer(0, .success(Self.reply("twelve bytes")))
        channel.embeddedEventLoop.run()
        let response = try #require(try Self.response(channel))
        #expect(response.head.headerFields[.contentLength] == "12" && response.body.isEmpty)
    }

    @Test("the fields the handler reads are found in one walk, a repeated one's values joined as HTTPFields joins them")
    func readFields() {
        var fields: HTTPFields = [
            .contentType: "text/plain", .xRequestID: "a", .expect: "100-Continue", HTTPField.Name("traceparent")!: "t",
            .connection: "close", .contentLength: "5", HTTPField.Name("x-request-idx")!: "not it",
        ]
        fields.append(HTTPField(name: HTTPField.Name("X-Request-ID")!, value: "b"))
        let read = RequestReplyChannelHandler.ReadFields(fields)
        #expect(read.requestID == "a, b" && read.requestID == fields[.xRequestID])
        #expect(read.expect == "100-Continue" && read.expectsContinue)
        #expect(read.traceparent == "t" && read.connection == "close" && read.contentLength == "5")
        let none = RequestReplyChannelHandler.ReadFields([.contentType: "text/plain", .expect: "200-ok"])
        #expect(none.requestID == nil && none.traceparent == nil && none.connection == nil && none.contentLength == nil)
        #expect(none.expect == "200-ok" && !none.expectsContinue)
    }
}
