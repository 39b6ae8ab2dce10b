@testable import GangwayEdge
import HTTPTypes
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import Testing

@Suite("Requests the decoder refuses get a problem JSON answer, in order; HTTP/1.0 gets HTTP/1.0 connections")
struct HTTP1ProtocolHandlerTests {
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
            try pipeline.addHandler(HTTP1ProtocolHandler(maxHeaderBytes: limits.maxHeaderListSize, requestID: { "test-id" }))
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
        #expect(answer.hasSuffix(#""detail":"the request's target (its path and query) and header fields pass the edge's limit of 1024 bytes in all","request_id":"test-id"}"#), "\(answer)")
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil)
        #expect(!channel.isActive)
    }

    @Test("a pipelined request that does not parse is answered after the response before it")
    func pipelined() async throws {
        let channel = try await Self.pipeline()
        _ = try? await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHo st: y\r\n\r\n"))
        await channel.testingEventLoop.run()
        guard case .head(let head)? = try await channel.readInbound(as: HTTPRequestPart.self) else {
            Issue.record("the first request did not pass")
            return
        }
        #expect(head.path == "/a")
        // Nothing is answered while the first request waits for its response.
        #expect(try await Self.written(channel) == "")
        #expect(channel.isActive)
        try await Self.respond(channel, headers: [.contentLength: "2"], body: "ok")
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

    /// Reads the one request head that passed, or fails the test.
    static func passedHead(_ channel: NIOAsyncTestingChannel) async throws -> HTTPRequest? {
        while let part = try await channel.readInbound(as: HTTPRequestPart.self) {
            if case .head(let head) = part { return head }
        }
        Issue.record("no request head passed")
        return nil
    }

    /// Writes a response with `headers` and `body`, as the handlers above would.
    static func respond(_ channel: NIOAsyncTestingChannel, headers: HTTPFields, body: String) async throws {
        try await channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .ok, headerFields: headers)))
        try await channel.writeOutbound(HTTPResponsePart.body(ByteBuffer(string: body)))
        try await channel.writeOutbound(HTTPResponsePart.end(nil))
        await channel.testingEventLoop.run()
    }

    @Test("HTTP/1.0 without keep-alive: the request goes up with Connection: close and no Expect, for the handlers above to close after an HTTP/1.0 response")
    func http10Close() async throws {
        let channel = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "POST /v1/echo HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"))
        let head = try await Self.passedHead(channel)
        #expect(head?.headerFields[.connection] == "close")
        #expect(head?.headerFields[.expect] == nil)
        try await Self.respond(channel, headers: [.contentLength: "2"], body: "hi")
        let answer = try await Self.written(channel)
        #expect(answer == "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nhi", "\(answer)")
        // Closing is the handlers' above, which read the rest of a request before they do.
        #expect(channel.isActive)
    }

    @Test("HTTP/1.0 with keep-alive: a response with a length says keep-alive and the connection stays; one without is unchunked and closes it")
    func http10KeepAlive() async throws {
        let channel = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"))
        let first = try await Self.passedHead(channel)
        #expect(first?.headerFields[.connection] == "Keep-Alive")
        try await Self.respond(channel, headers: [.contentLength: "2"], body: "ok")
        var answer = try await Self.written(channel)
        #expect(answer == "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\nok", "\(answer)")
        #expect(channel.isActive)

        try await channel.writeInbound(ByteBuffer(string: "GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"))
        _ = try await Self.passedHead(channel)
        try await Self.respond(channel, headers: [.contentType: "text/plain"], body: "streamed")
        answer = try await Self.written(channel)
        #expect(answer == "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nconnection: close\r\n\r\nstreamed", "\(answer)")
        #expect(!channel.isActive)
    }

    @Test("HTTP/1.1 with close among other Connection tokens goes up as exactly close, which the handlers above close on; the response says close")
    func http11CloseAmongTokens() async throws {
        let channel = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: x\r\nConnection: TE, Close\r\n\r\n"))
        let head = try await Self.passedHead(channel)
        #expect(head?.headerFields[.connection] == "close")
        try await Self.respond(channel, headers: [.contentLength: "2"], body: "ok")
        let answer = try await Self.written(channel)
        #expect(answer == "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok", "\(answer)")
        #expect(channel.isActive)
    }

    @Test("HTTP/1.1 keep-alive passes untouched both ways: its head as sent, a response without a length chunked, the connection open")
    func http11Untouched() async throws {
        let channel = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"))
        let head = try await Self.passedHead(channel)
        #expect(head?.headerFields[.expect] == "100-continue" && head?.headerFields[.connection] == nil)
        // An interim 100 Continue is not the answer: the final response is still framed as 1.1.
        try await channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .continue)))
        try await Self.respond(channel, headers: [:], body: "ok")
        let answer = try await Self.written(channel)
        #expect(answer == "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", "\(answer)")
        #expect(channel.isActive)
    }

    @Test("an HTTP/1.1 request without exactly one Host is a 400 problem, after the responses owed before it; nothing after it goes up, and the connection closes")
    func hostRequired() async throws {
        for (request, detail) in [
            ("GET /b HTTP/1.1\r\n\r\n", "an HTTP/1.1 request must carry a Host header field"),
            ("GET /b HTTP/1.1\r\nHost: x\r\nHOST: y\r\n\r\n", "the request carries 2 Host header fields, where HTTP/1.1 allows one"),
        ] {
            let channel = try await Self.pipeline()
            try await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\nhost: x\r\n\r\n" + request + "GET /c HTTP/1.1\r\nHost: x\r\n\r\n"))
            let first = try await Self.passedHead(channel)
            #expect(first?.path == "/a")
            #expect(try await channel.readInbound(as: HTTPRequestPart.self) == .end(nil))
            #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil, "nothing after the refused request goes up")
            #expect(try await Self.written(channel) == "")
            try await Self.respond(channel, headers: [.contentLength: "2"], body: "ok")
            let answer = try await Self.written(channel)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 400 Bad Request\r\n"), "\(answer)")
            #expect(answer.hasSuffix(#""detail":"\#(detail)","request_id":"test-id"}"#), "\(answer)")
            #expect(!channel.isActive)
        }
        // HTTP/1.0 needs none.
        let channel = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "GET /a HTTP/1.0\r\n\r\n"))
        #expect(try await Self.passedHead(channel)?.path == "/a")
    }

    @Test("a header value that is not UTF-8 is a 400 problem naming the field, not passed on altered; UTF-8 values pass as sent")
    func headerValuesNotUTF8() async throws {
        var request = ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: x\r\nX-Name: caf")
        request.writeBytes([0xE9])  // ISO-8859-1 é
        request.writeString("\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        let channel = try await Self.pipeline()
        try await channel.writeInbound(request)
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil, "nothing goes up")
        let answer = try await Self.written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.hasSuffix(#""detail":"the value of header field 'X-Name' is not UTF-8 text, and the edge would have to alter it","request_id":"test-id"}"#), "\(answer)")
        #expect(!channel.isActive)

        let utf8 = try await Self.pipeline()
        try await utf8.writeInbound(ByteBuffer(string: "GET /a HTTP/1.1\r\nHost: x\r\nX-Name: café ✓\r\n\r\n"))
        #expect(try await Self.passedHead(utf8)?.headerFields[HTTPField.Name("x-name")!] == "café ✓")
    }

    @Test("a transfer coding other than chunked is a 501 problem naming it, nothing goes up and the connection closes; chunked alone passes, in any case and spacing")
    func transferCodings() async throws {
        for fields in ["Transfer-Encoding: gzip, chunked\r\n", "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"] {
            let channel = try await Self.pipeline()
            try await channel.writeInbound(ByteBuffer(string: "POST /a HTTP/1.1\r\nHost: x\r\n\(fields)\r\n5\r\nhello\r\n0\r\n\r\n"))
            #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil, "nothing goes up")
            let answer = try await Self.written(channel)
            #expect(answer.hasPrefix("HTTP/1.1 501 Not Implemented\r\n"), "\(answer)")
            #expect(answer.contains(#""type":"https://gangway.dev/problems/not-implemented""#), "\(answer)")
            #expect(answer.hasSuffix(#""detail":"the request's transfer coding 'gzip, chunked' is not supported: send the body as it is, with Content-Length or Transfer-Encoding: chunked","request_id":"test-id"}"#), "\(answer)")
            #expect(!channel.isActive)
        }
        let chunked = try await Self.pipeline()
        try await chunked.writeInbound(ByteBuffer(string: "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:  Chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
        #expect(try await Self.passedHead(chunked)?.path == "/a")
        #expect(try await chunked.readInbound(as: HTTPRequestPart.self) == .body(ByteBuffer(string: "hello")))

        #expect(HTTP1ProtocolHandler.unsupportedTransferCoding(["Content-Length": "3"]) == nil)
        #expect(HTTP1ProtocolHandler.unsupportedTransferCoding(["transfer-encoding": "chunked"]) == nil)
        #expect(HTTP1ProtocolHandler.unsupportedTransferCoding(["Transfer-Encoding": "\tCHUNKED,"]) == nil)
        #expect(HTTP1ProtocolHandler.unsupportedTransferCoding(["Transfer-Encoding": "chunked, chunked"]) == "chunked, chunked")
        #expect(HTTP1ProtocolHandler.unsupportedTransferCoding(["Transfer-Encoding": "identity"]) == "identity")
    }

    @Test("a request goes up as the version-free request NIO's conversion makes: the target as sent, the first Host as authority and out of the fields, the rest in order; trailers too")
    func versionFree() async throws {
        let channel = try await Self.pipeline()
        try await channel.writeInbound(ByteBuffer(string: "POST /a/b%20c?d=1&e HTTP/1.1\r\nhost: example.com:8080\r\nX-A: 1\r\nContent-Type: text/plain\r\nx-a: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: t\r\n\r\n"))
        let head = try #require(try await channel.readInbound(as: HTTPRequestPart.self))
        guard case .head(let request) = head else {
            Issue.record("\(head) is not a head")
            return
        }
        #expect(request.method == .post && request.scheme == "http" && request.authority == "example.com:8080")
        #expect(request.path == "/a/b%20c?d=1&e")
        #expect(request.headerFields.map(\.name.rawName) == ["X-A", "Content-Type", "x-a", "Transfer-Encoding"])
        #expect(request.headerFields[values: HTTPField.Name("x-a")!] == ["1", "2"])
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == .body(ByteBuffer(string: "hi")))
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == .end([HTTPField.Name("x-trailer")!: "t"]))

        // The short way agrees with NIO's conversion wherever it is taken, and the other forms
        // of target go through NIO's.
        let heads = [
            HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/time", headers: ["Host": "x", "Accept": "*/*"]),
            HTTPRequestHead(version: .http1_1, method: .DELETE, uri: "/", headers: ["A": "1", "HOST": "y", "Host": "z"]),
            HTTPRequestHead(version: .http1_0, method: .PROPFIND, uri: "//double?q", headers: [:]),
            HTTPRequestHead(version: .http1_1, method: .GET, uri: "http://example.com/p?q=1", headers: ["Host": "example.com"]),
            HTTPRequestHead(version: .http1_1, method: .OPTIONS, uri: "*", headers: ["Host": "x"]),
        ]
        for head in heads {
            #expect(HTTP1ProtocolHandler.request(head) == (try HTTPRequest(head, secure: false, splitCookie: false)), "\(head)")
        }
        #expect(HTTP1ProtocolHandler.request(heads[3])?.path == "/p?q=1")
    }

    @Test("a request whose method is not a token (which the decoder never passes) is a 400 problem, and the connection closes")
    func methodNotAToken() async throws {
        let channel = NIOAsyncTestingChannel()
        try await channel.testingEventLoop.executeInContext {
            try channel.pipeline.syncOperations.addHandler(HTTPResponseEncoder())
            try channel.pipeline.syncOperations.addHandler(HTTP1ProtocolHandler(maxHeaderBytes: 16_384, requestID: { "test-id" }))
        }
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8080))
        let head = HTTPRequestHead(version: .http1_1, method: .RAW(value: "NOT A TOKEN"), uri: "/a", headers: ["Host": "x"])
        try await channel.writeInbound(HTTPServerRequestPart.head(head))
        await channel.testingEventLoop.run()
        #expect(try await channel.readInbound(as: HTTPRequestPart.self) == nil, "nothing goes up")
        let answer = try await Self.written(channel)
        #expect(answer.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(answer)")
        #expect(answer.hasSuffix(#""detail":"the request's method 'NOT A TOKEN' is not an HTTP token","request_id":"test-id"}"#), "\(answer)")
        #expect(!channel.isActive)
    }
}
