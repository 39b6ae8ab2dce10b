import GangwayAMQPCore
import GangwayCore
import Hummingbird
import NIOCore
import NIOHTTP1

/// Renders errors as RFC 9457 problem JSON: the one place where failures become HTTP.
enum ProblemResponse {
    static let contentType = "application/problem+json"

    static func make(_ error: GatewayError, instance: String, requestID: String) -> Response {
        var headers: HTTPFields = [.contentType: contentType]
        if !error.allow.isEmpty { headers[.allow] = error.allow.joined(separator: ", ") }
        if error.status == 503 { headers[.retryAfter] = "1" }
        return Response(
            status: .init(code: error.status),
            headers: headers,
            body: .init(byteBuffer: body(error, instance: instance, requestID: requestID))
        )
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
        switch error {
        case let e as GatewayError:
            return make(e, instance: instance, requestID: requestID)
        case let e as HTTPParserError:
            // Inside a request body (a malformed chunk); the others are answered below Hummingbird.
            return make(ParseErrorProblemHandler.problem(for: e, maxHeaderBytes: nil), instance: instance, requestID: requestID)
        case is NIOTooManyBytesError:
            return make(.badRequest("the request body is too large"), instance: instance, requestID: requestID)
        case let e as HTTPError:
            let status = Int(e.status.code)
            let gatewayError: GatewayError =
                switch status {
                case 404: .notFound(path: instance)
                case 413: .payloadTooLarge(limit: nil)
                default: .badRequest(e.body ?? e.status.reasonPhrase)
                }
            return make(gatewayError, instance: instance, requestID: requestID)
        default:
            return make(.badRequest("the request could not be processed"), instance: instance, requestID: requestID)
        }
    }
}
