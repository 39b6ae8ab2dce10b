import GangwayConfig
import GangwayCore
import Hummingbird

/// The route finder: matches the request against routes.yaml and hands it to the handler of
/// the route's shape. Requests for no route fall through to the edge's own endpoints
/// (health, readiness), and from there to a 404 problem.
struct RouteDispatchMiddleware: RouterMiddleware {
    typealias Context = GatewayRequestContext

    let routes: RouteTable
    let requestReply: RequestReplyHandler
    let aggregate: AggregateHandler
    let stream: StreamHandler
    let gather: GatherHandler
    let job: JobHandler
    let topics: TopicHandler
    /// Serve the demo page at `GET /` when no route takes it.
    let demoPage: Bool
    /// Paths the edge serves itself; never shadowed by a route.
    let reservedPaths: Set<String>

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if reservedPaths.contains(path) {
            return try await next(request, context)
        }
        if let response = try await job.handleBuiltIn(request, context: context) {
            return response
        }
        if let response = try await topics.handleBuiltIn(request, context: context) {
            return response
        }
        switch routes.match(method: request.method.rawValue, path: path) {
        case .matched(let route, let parameters):
            switch route.shape {
            case .requestReply:
                return try await requestReply.handle(request, context: context, route: route, parameters: parameters)
            case .aggregate:
                return try await aggregate.handle(request, context: context, route: route, parameters: parameters)
            case .stream:
                return try await stream.handle(request, context: context, route: route, parameters: parameters)
            case .gather:
                return try await gather.handle(request, context: context, route: route, parameters: parameters)
            case .job:
                return try await job.submit(request, context: context, route: route, parameters: parameters)
            }
        case .methodNotAllowed(let allowed):
            throw GatewayError.methodNotAllowed(method: request.method.rawValue, path: path, allow: allowed)
        case .badParameter(let name, let reason):
            throw GatewayError.badRequest("path parameter '\(name)' \(reason)")
        case .notFound:
            if demoPage && path == "/" && request.method == .get {
                return Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: DemoPage.html))
            }
            throw GatewayError.notFound(path: path)
        }
    }
}
