import GangwayAMQPCore
import GangwayConfig
import GangwayCore
import HTTPTypes
import Hummingbird
import NIOCore

/// The streamed-reply shape: each part goes to the client as it arrives, in the format the
/// client's `Accept` asks for — NDJSON (`application/x-ndjson`), Server-Sent Events
/// (`text/event-stream`, `id` = part number) or the parts' bytes as a chunked body.
///
/// Nothing is buffered on the way out: each part is written (and flushed) on its own. A
/// failure after the head is sent ends the stream with an error the client can see: an SSE
/// `event: error`, a final NDJSON `{"error": …}` line, or, for a plain body, an aborted
/// connection (the chunked body never terminates). A client that goes away cancels the
/// request, and so does a stream that fails: the worker gets a cancel message.
struct StreamHandler: Sendable {
    let client: StreamClient

    enum Format {
        case ndjson
        case sse
        case raw

        init(accept: String?) {
            let a = accept?.lowercased() ?? ""
            if a.contains("text/event-stream") {
                self = .sse
            } else if a.contains("application/x-ndjson") || a.contains("application/jsonl") {
                self = .ndjson
            } else {
                self = .raw
            }
        }
    }

    func handle(_ request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> Response {
        let gatewayRequest = try await GatewayRequest.make(from: request, context: context, route: route, parameters: parameters)
        let opened = try await client.open(gatewayRequest, idleMilliseconds: route.idleTimeoutMilliseconds)
        guard GatewayReply.carriesContent(status: opened.head.status) else {
            // A 204, 205 or 304 answers with its head alone: the parts after it are not wanted.
            opened.stop()
            return opened.head.response
        }
        let format = Format(accept: request.headers[.accept])
        var headers = opened.head.httpHeaders
        switch format {
        case .ndjson:
            headers[.contentType] = "application/x-ndjson"
        case .sse:
            headers[.contentType] = "text/event-stream"
            headers[.cacheControl] = "no-cache"
            headers[HTTPField.Name("X-Accel-Buffering")!] = "no"
        case .raw:
            if headers[.contentType] == nil { headers[.contentType] = "application/octet-stream" }
        }
        let parts = opened.parts
        let logger = context.logger
        let body = ResponseBody { writer in
            var index = 0
            do {
                while let part = try await parts.next() {
                    try await writer.write(Self.encode(part, index: index, format: format))
                    index += 1
                }
            } catch let error as GatewayError {
                logger.info("stream.failed", metadata: ["route": "\(route.name)", "stream.parts": "\(index)", "error": "\(error)"])
                // Whatever the worker still sends goes nowhere: tell it to stop (a worker that
                // failed the stream itself has stopped, and ignores the cancel).
                opened.stop()
                guard let trailer = Self.encodeError(error, format: format) else { throw error }
                try await writer.write(trailer)
            } catch {
                // The client went away (the write failed): stop the worker too.
                logger.info("stream.client.gone", metadata: ["route": "\(route.name)", "stream.parts": "\(index)"])
                opened.stop()
                throw error
            }
            try await writer.finish(nil)
        }
        return Response(status: .init(code: opened.head.status), headers: headers, body: body)
    }

    static func encode(_ part: ByteBuffer, index: Int, format: Format) -> ByteBuffer {
        switch format {
        case .raw:
            return part
        case .ndjson:
            var out = part
            if out.readableBytesView.last != UInt8(ascii: "\n") { out.writeStaticString("\n") }
            return out
        case .sse:
            return SSEEncoder.event(id: String(index), data: String(buffer: part))
        }
    }

    static func encodeError(_ error: GatewayError, format: Format) -> ByteBuffer? {
        let json = #"{"type":\#(JSONString.quote(error.type)),"status":\#(error.status),"title":\#(JSONString.quote(error.title)),"detail":\#(JSONString.quote(error.detail))}"#
        switch format {
        case .raw: return nil
        case .ndjson: return ByteBuffer(string: #"{"error":\#(json)}"# + "\n")
        case .sse: return SSEEncoder.event(name: "error", data: json)
        }
    }
}
