import GangwayConfig
import GangwayCore
import HTTPTypes
import Hummingbird
import HummingbirdCore
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
        return GatewayRequest(
            head: request.head,
            uri: request.uri,
            route: route,
            parameters: parameters,
            body: body,
            requestID: context.requestID,
            traceparent: context.traceparent
        )
    }

    /// What the bus needs of a request whose body is in.
    init(head: HTTPRequest, uri: URI, route: Route, parameters: [String: String], body: ByteBuffer, requestID: String, traceparent: String) {
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(head.headerFields.count)
        for field in head.headerFields {
            headers.append((field.name.canonicalName, field.value))
        }
        self.init(
            route: route,
            parameters: parameters,
            method: head.method.rawValue,
            path: uri.path,
            query: uri.query ?? "",
            headers: headers,
            body: body,
            requestID: requestID,
            traceparent: traceparent
        )
    }
}

extension GatewayReply {
    /// The HTTP response for a reply: status, content type and encoding, and its headers.
    var response: Response {
        Response(status: .init(code: status), headers: httpHeaders, body: .init(byteBuffer: body))
    }

    /// Content type and encoding, and the reply's headers.
    var httpHeaders: HTTPFields { httpFields() }

    /// Content type and encoding, and the reply's headers but those `skipping` names, with room
    /// for `extraCapacity` fields more.
    func httpFields(extraCapacity: Int = 0, skipping skip: (HTTPField.Name) -> Bool = { _ in false }) -> HTTPFields {
        var fields = HTTPFields()
        fields.reserveCapacity(headers.count + 2 + extraCapacity)
        if let contentType, !contentType.isEmpty {
            fields.append(HTTPField(name: .contentType, value: contentType))
        }
        if let contentEncoding, !contentEncoding.isEmpty {
            fields.append(HTTPField(name: .contentEncoding, value: contentEncoding))
        }
        for (name, value) in headers {
            if let fieldName = HTTPField.Name(name), !skip(fieldName) {
                fields.append(HTTPField(name: fieldName, value: value))
            }
        }
        return fields
    }
}
