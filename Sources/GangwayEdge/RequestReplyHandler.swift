import GangwayConfig
import GangwayCore
import Hummingbird

/// The request/reply shape: body in, one worker reply out as the HTTP response.
struct RequestReplyHandler: Sendable {
    let client: RequestReplyClient

    func handle(_ request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> Response {
        let gatewayRequest = try await GatewayRequest.make(from: request, context: context, route: route, parameters: parameters)
        return try await client.send(gatewayRequest).response
    }
}
