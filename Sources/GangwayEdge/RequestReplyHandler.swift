import GangwayConfig
import GangwayCore
import HTTPTypes
import Hummingbird
import NIOCore

/// The request/reply shape: body in, one worker reply out as the HTTP response.
struct RequestReplyHandler: Sendable {
    let client: RequestReplyClient

    func handle(_ request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> Response {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > route.maxBodyBytes {
            throw GatewayError.payloadTooLarge(limit: route.maxBodyBytes)
        }
        let body: ByteBuffer
        do {
            body = try await request.body.collect(upTo: route.maxBodyBytes)
        } catch is NIOTooManyBytesError {
            throw GatewayError.payloadTooLarge(limit: route.maxBodyBytes)
        }
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(request.headers.count)
        for field in request.headers {
            headers.append((field.name.canonicalName, field.value))
        }
        let gatewayRequest = GatewayRequest(
            route: route,
            parameters: parameters,
            method: request.method.rawValue,
            path: request.uri.path,
            query: request.uri.query ?? "",
            headers: headers,
            body: body,
            requestID: context.requestID,
            traceparent: context.traceparent
        )
        let reply = try await client.send(gatewayRequest)
        var responseHeaders = HTTPFields()
        if let contentType = reply.contentType, !contentType.isEmpty {
            responseHeaders[.contentType] = contentType
        }
        if let encoding = reply.contentEncoding, !encoding.isEmpty {
            responseHeaders[.contentEncoding] = encoding
        }
        for (name, value) in reply.headers {
            if let fieldName = HTTPField.Name(name) {
                responseHeaders.append(HTTPField(name: fieldName, value: value))
            }
        }
        return Response(status: .init(code: reply.status), headers: responseHeaders, body: .init(byteBuffer: reply.body))
    }
}
