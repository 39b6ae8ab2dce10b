import GangwayConfig
@testable import GangwayEdge
import HTTPTypes
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Synchronization
import Testing

/// What a future settled with, read after the embedded channel ran.
final class Settled<Value: Sendable>: Sendable {
    private let result = Mutex<Result<Value, any Error>?>(nil)
    var value: Value? { result.withLock { try? $0?.get() } }
    var failed: Bool { result.withLock { if case .failure? = $0 { true } else { false } } }

    init(_ future: EventLoopFuture<Value>) {
        future.whenComplete { outcome in self.result.withLock { $0 = outcome } }
    }
}

@Suite("First-request gate: event-stream connections leave Hummingbird's task")
struct FirstRequestGateTests {
    /// The edge's HTTP/1 pipeline (``EdgeHTTPChannel/configure(_:decoderLimits:idleTimeout:requestReply:logger:)``) on a
    /// test channel, and what the gate decides.
    static func pipeline() async throws -> (NIOAsyncTestingChannel, Settled<FirstRequestGate.Decision>) {
        let channel = NIOAsyncTestingChannel()
        let decision = try await channel.testingEventLoop.executeInContext {
            try EdgeHTTPChannel.configure(
                channel.pipeline.syncOperations,
                decoderLimits: .init(),
                requestReply: .init(
                    routes: RouteTable(routes: []), reservedPaths: [], reservedPrefixes: [], serverName: nil,
                    send: { _, completion in completion(.failure(.shuttingDown)) }, aggregate: nil
                ),
                logger: Logger(label: "test")
            )
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        return (channel, Settled(decision))
    }

    static func has<H: ChannelHandler & SendableMetatype>(_ type: H.Type, in channel: NIOAsyncTestingChannel) async throws -> Bool {
        try await channel.testingEventLoop.executeInContext {
            (try? channel.pipeline.syncOperations.handler(type: type)) != nil
        }
    }

    @Test("which first requests may open an event stream")
    func accepts() {
        func head(_ method: HTTPRequest.Method, _ path: String) -> HTTPRequest {
            HTTPRequest(method: method, scheme: nil, authority: "x", path: path)
        }
        #expect(DetachedEventStreams.accepts(head(.get, "/v1/topics/stream?match=a.*")))
        #expect(DetachedEventStreams.accepts(head(.get, "/v1/topics/stream")))
        #expect(DetachedEventStreams.accepts(head(.get, "/v1/jobs/abc/events")))
        #expect(DetachedEventStreams.accepts(head(.get, "/v1/jobs/abc/events?lastEventId=3")))
        #expect(!DetachedEventStreams.accepts(head(.post, "/v1/topics/stream")))
        #expect(!DetachedEventStreams.accepts(head(.get, "/v1/jobs/abc")))
        #expect(!DetachedEventStreams.accepts(head(.get, "/v1/topics/streams")))
        #expect(!DetachedEventStreams.accepts(head(.get, "/v1/echo?x=/v1/jobs/a/events")))
        #expect(!DetachedEventStreams.accepts(head(.get, "/healthz")))
    }

    @Test("an event-stream request is held; once it is complete the decoder goes and later input is dropped")
    func eventStream() async throws {
        let (channel, settled) = try await Self.pipeline()
        // A second request pipelined behind the first: the decoder decodes it while it leaves,
        // and the gate drops it.
        try await channel.writeInbound(
            ByteBuffer(string: "GET /v1/topics/stream?match=a.* HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
        )
        await channel.testingEventLoop.run()
        guard case .eventStream(let head)? = settled.value else {
            Issue.record("no event-stream decision: \(String(describing: settled.value))")
            return
        }
        #expect(head.path == "/v1/topics/stream?match=a.*")
        #expect(head.headerFields[HTTPField.Name("Last-Event-ID")!] == "7")
        // Nothing reached the end of the pipeline, and the decoder is gone.
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil)
        #expect(try await !Self.has(ByteToMessageHandler<HTTPRequestDecoder>.self, in: channel))
        #expect(try await Self.has(InboundDiscarder.self, in: channel))
        #expect(try await Self.has(FirstRequestGate.self, in: channel))
        #expect(try await !Self.has(RequestReplyChannelHandler.self, in: channel), "no requests to serve on a stream's connection")
        // Whatever the client sends now is dropped, even bytes that are not HTTP.
        try await channel.writeInbound(ByteBuffer(string: "GET /again HTTP/1.1\r\n\r\n\u{0}\u{1}garbage"))
        await channel.testingEventLoop.run()
        #expect(try await channel.readInbound(as: ByteBuffer.self) == nil)
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil)
        #expect(channel.isActive)
        _ = try await channel.finish()
    }

    @Test("any other first request goes on to Hummingbird's async channel, and the gate leaves")
    func ordinary() async throws {
        let (channel, settled) = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"))
        await channel.testingEventLoop.run()
        guard case .ordinary(let asyncChannel)? = settled.value else {
            Issue.record("no ordinary decision: \(String(describing: settled.value))")
            return
        }
        #expect(try await !Self.has(FirstRequestGate.self, in: channel))
        #expect(try await Self.has(ByteToMessageHandler<HTTPRequestDecoder>.self, in: channel))
        #expect(try await Self.has(RequestReplyChannelHandler.self, in: channel))
        // The held head, and what followed it, reach the async channel in order.
        let parts = try await asyncChannel.executeThenClose { inbound, _ in
            var parts: [HTTPRequestPart] = []
            for try await part in inbound {
                parts.append(part)
                if parts.count == 3 { break }
            }
            return parts
        }
        guard parts.count == 3, case .head(let head) = parts[0], case .body(let body) = parts[1], case .end = parts[2] else {
            Issue.record("unexpected parts: \(parts)")
            return
        }
        #expect(head.method == .post && head.path == "/v1/echo")
        #expect(String(buffer: body) == "hi")
    }

    @Test("a first request that does not parse is answered with a 400 problem below the gate, and the connection closes")
    func unparsable() async throws {
        let (channel, settled) = try await Self.pipeline()
        _ = try? await channel.writeInbound(ByteBuffer(string: "NOT HTTP AT ALL\r\n\r\n"))
        await channel.testingEventLoop.run()
        let answer = try await HTTP1ProtocolHandlerTests.written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.contains(#""status":400"#) && answer.contains("not valid HTTP/1.1"), "\(answer)")
        // The gate never saw a request: the connection closed under it.
        #expect(settled.failed)
        #expect(!channel.isActive)
    }

    @Test("a connection that closes before its first request fails the decision")
    func closedEarly() async throws {
        let (channel, settled) = try await Self.pipeline()
        try await channel.close()
        await channel.testingEventLoop.run()
        #expect(settled.failed)
    }

    @Test("a connection whose input ends before any request reaches the gate closes, and the decision fails")
    func inputClosedBeforeRequest() async throws {
        let (channel, settled) = try await Self.pipeline()
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        await channel.testingEventLoop.run()
        #expect(!channel.isActive)
        #expect(settled.failed)
    }

    @Test("the Date header's format")
    func date() {
        #expect(HTTPDate.format(secondsSinceEpoch: 784_111_777) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(secondsSinceEpoch: 0) == "Thu, 01 Jan 1970 00:00:00 GMT")
    }
}
