import ServiceLifecycle

/// Runs the HTTP server and bounds its graceful shutdown: once the shutdown begins, the
/// requests and streams in flight get `drain` to finish; then `deadline` runs (the edge fails
/// what is still waiting for the broker, so that every client gets an answer, a 503 or a
/// stream's error, rather than a connection closed under it) and the server finishes draining.
///
/// A stream of parts or a request with a long timeout would otherwise hold the edge up past
/// what its supervisor allows (Kubernetes kills a pod 30 s after SIGTERM by default).
public struct DrainDeadline<Server: Service>: Service {
    let server: Server
    let drain: Duration
    let deadline: @Sendable () -> Void

    public init(server: Server, drain: Duration, deadline: @escaping @Sendable () -> Void) {
        self.server = server
        self.drain = drain
        self.deadline = deadline
    }

    public func run() async throws {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            // Both children see the service's graceful shutdown. Each says whether it is the
            // server: the service ends when the server does, not when the deadline has run.
            group.addTask {
                try await server.run()
                return true
            }
            group.addTask {
                do {
                    try await gracefulShutdown()
                    try await Task.sleep(for: drain)
                } catch {
                    return false  // cancelled: the server stopped first
                }
                deadline()
                return false
            }
            while let serverFinished = try await group.next(), !serverFinished {}
            group.cancelAll()
        }
    }
}
