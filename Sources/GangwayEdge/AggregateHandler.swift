import GangwayConfig
import GangwayCore
import Hummingbird

/// The aggregate shape: one request, N legs on the bus, one merged JSON response.
struct AggregateHandler: Sendable {
    let client: AggregateClient

    func handle(_ request: Request, context: GatewayRequestContext, route: Route, parameters: [String: String]) async throws -> Response {
        let gatewayRequest = try await GatewayRequest.make(from: request, context: context, route: route, parameters: parameters)
        return try await client.send(gatewayRequest).response
    }
}
