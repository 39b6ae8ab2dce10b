@testable import GangwayEdge
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

@Suite("Requests the decoder refuses get a problem JSON answer, in order")
struct ParseErrorProblemHandlerTests {
    /// Everything written to the client so far, as text.
    static func written(_ channel: NIOAsyncTestingChannel) async throws -> String {
        var text = ""
        while let buffer = try await channel.readOutbound(as: ByteBuffer.self) {
            text += String(buffer: buffer)
        }
        return text
    }

    /// The decoder, the encoder and the handler, with `limits`; parts that pass reach the test.
    static func pipeline(limits: NIOHTTPDecoderLimitConfiguration = .init()) async throws -> NIOAsyncTestingChannel {
        let channel = NIOAsyncTestingChannel()
        try await channel.testingEventLoop.executeInContext {
            let pipeline = channel.pipeline.syncOperations
            try pipeline.addHandler(HTTPResponseEncoder())
            try pipeline.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits)))
            try pipeline.addHandler(ParseErrorProblemHandler(maxHeaderBytes: limits.maxHeaderListSize, requestID: { "test-id" }))
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        return channel
    }

    @Test("header fields past the limit get 431, with the limit named, and the connection closes")
    func headersTooLarge() async throws {
        var limits = NIOHTTPDecoderLimitConfiguration()
        limits.maxHeaderListSize = 1024
        let channel = try await Self.pipeline(limits: limits)
        let big = String(repeating: "k", count: 2000)
        _ = try? await channel.writeInbound(ByteBuffer(string: "GET /v1/time HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n"))
        await channel.testingEventLoop.run()
        let answer = try await Self.written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "\(answer)")
        #expect(answer.contains("content-type: application/problem+json\r\n") || answer.contains("Content-Type: application/problem+json\r\n"), "\(answer)")
        #expect(answer.contains("Connection: close\r\n") && answer.contains("X-Request-ID: test-id\r\n"), "\(answer)")
        #expect(answer.hasSuffix(#""detail":"the request's header fields pass the edge's limit of 1024 bytes in all","request_id":"test-id"}"#), "\(answer)")
        #expect(try await channel.readInbound(as: HTTPServerRequestPart.self) == nil)
        #expect(!channel.isActive)
    }

    @Test("a pipelined request that does not parse is answered after the response before it")
    func pipelined() async throws {
        let channel = try await Self.pipeline()
        _ = try? await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo st: y\r\n\r\n"))
        await channel.testingEventLoop.run()
        guard case .head(let head)? = try await channel.readInbound(as: HTTPServerRequestPart.self) else {
            Issue.record("the first request did not pass")
            return
        }
        #expect(head.uri == "/a")
        // Nothing is answered while the first request waits for its response.
        #expect(try await Self.written(channel) == "")
        #expect(channel.isActive)
        let ok = HTTPResponseHead(version: .http1_1, status: .ok, headers: ["Content-Length": "2"])
        try await channel.writeOutbound(HTTPServerResponsePart.head(ok))
        try await channel.writeOutbound(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(string: "ok"))))
        try await channel.writeOutbound(HTTPServerResponsePart.end(nil))
        await channel.testingEventLoop.run()
        let answer = try await Self.written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), "\(answer)")
        #expect(answer.contains("okHTTP/1.1 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.hasSuffix(#""detail":"the request is not valid HTTP/1.1 (invalid character in header)","request_id":"test-id"}"#), "\(answer)")
        #expect(!channel.isActive)
    }

    @Test("an error inside a request's body goes on to whoever reads that body; nothing is written here")
    func insideABody() async throws {
        let channel = try await Self.pipeline()
        await #expect(throws: HTTPParserError.self) {
            try await channel.writeInbound(ByteBuffer(string: "POST /v1/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"))
        }
        await channel.testingEventLoop.run()
        #expect(try await Self.written(channel) == "")
    }
}
