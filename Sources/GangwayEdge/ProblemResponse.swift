import GangwayAMQPCore
import GangwayCore
import Hummingbird
import NIOCore
import NIOHTTP1

/// Renders errors as RFC 9457 problem JSON: the one place where failures become HTTP.
enum ProblemResponse {
    static let contentType = "application/problem+json"

    static func make(_ error: GatewayError, instance: String, requestID: String) -> Response {
        Response(
            status: .init(code: error.status),
            headers: headers(error),
            body: .init(byteBuffer: body(error, instance: instance, requestID: requestID))
        )
    }

    /// The problem's content type, and `Allow` or `Retry-After` when its status calls for one.
    static func headers(_ error: GatewayError) -> HTTPFields {
        var headers: HTTPFields = [.contentType: contentType]
        if !error.allow.isEmpty { headers[.allow] = error.allow.joined(separator: ", ") }
        if error.status == 503 { headers[.retryAfter] = "1" }
        return headers
    }

    /// The problem JSON itself; `instance` is left out when the request's path is unknown.
    static func body(_ error: GatewayError, instance: String?, requestID: String) -> ByteBuffer {
        let instanceMember = instance.map { #","instance":\#(JSONString.quote($0))"# } ?? ""
        return ByteBuffer(
            string: """
                {"type":\(JSONString.quote(error.type)),"title":\(JSONString.quote(error.title)),"status":\(error.status),\
                "detail":\(JSONString.quote(error.detail))\(instanceMember),"request_id":\(JSONString.quote(requestID))}
                """
        )
    }

    /// Maps errors from Hummingbird or anywhere else, so that no error escapes as plain text.
    static func make(_ error: any Error, instance: String, requestID: String) -> Response {
        make(gatewayError(for: error, instance: instance), instance: instance, requestID: requestID)
    }

    /// What any error means to the client.
    static func gatewayError(for error: any Error, instance: String) -> GatewayError {
        switch error {
        case let e as GatewayError:
            return e
        case let e as HTTPParserError:
            // Inside a request body (a malformed chunk); the others are answered below Hummingbird.
            return HTTP1ProtocolHandler.problem(for: e, maxHeaderBytes: nil)
        case is NIOTooManyBytesError:
            return .badRequest("the request body is too large")
        case let e as HTTPError:
            switch Int(e.status.code) {
            case 404: return .notFound(path: instance)
            case 413: return .payloadTooLarge(limit: nil)
            default: return .badRequest(e.body ?? e.status.reasonPhrase)
            }
        default:
            return .badRequest("the request could not be processed")
        }
    }
}
