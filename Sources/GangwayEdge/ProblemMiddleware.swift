import GangwayCore
import HTTPTypes
import Hummingbird

/// Outermost middleware: gives every request an id, echoes it, and turns every error into a
/// problem+json response so that no failure reaches the client as an empty or text body.
struct ProblemMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.requestID = RequestIdentity.requestID(from: request.headers[.xRequestID])
        context.traceparent = RequestIdentity.traceparent(from: request.headers[.traceparent])
        var response: Response
        do {
            response = try await next(request, context)
        } catch {
            response = ProblemResponse.make(error, instance: request.uri.path, requestID: context.requestID)
        }
        response.headers[.xRequestID] = context.requestID
        return response
    }
}

extension HTTPField.Name {
    static let xRequestID = Self("X-Request-ID")!
    static let traceparent = Self("traceparent")!
}
