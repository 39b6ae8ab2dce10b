import GangwayConfig
import GangwayCore
import Hummingbird

/// The gather shape: one request fanned out, every reply until enough or the deadline.
struct GatherHandler: Sendable {
    let client: GatherClient

    func handle(_ request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> Response {
        let gatewayRequest = try await GatewayRequest.make(from: request, context: context, route: route, parameters: parameters)
        return try await client.send(gatewayRequest).response
    }
}
