import GangwayConfig
import GangwayCore
import HTTPTypes
import Hummingbird
import NIOCore

extension GatewayRequest {
    /// Reads the body within the route's limit and captures what the bus needs of the request.
    /// - Throws: ``GatewayError/payloadTooLarge(limit:)`` on `Content-Length` or while reading.
    static func make(from request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> GatewayRequest {
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
        return GatewayRequest(
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
    }
}

extension GatewayReply {
    /// The HTTP response for a reply: status, content type and encoding, and its headers.
    var response: Response {
        Response(status: .init(code: status), headers: httpHeaders, body: .init(byteBuffer: body))
    }

    /// Content type and encoding, and the reply's headers.
    var httpHeaders: HTTPFields {
        var fields = HTTPFields()
        if let contentType, !contentType.isEmpty {
            fields[.contentType] = contentType
        }
        if let contentEncoding, !contentEncoding.isEmpty {
            fields[.contentEncoding] = contentEncoding
        }
        for (name, value) in headers {
            if let fieldName = HTTPField.Name(name) {
                fields.append(HTTPField(name: fieldName, value: value))
            }
        }
        return fields
    }
}
