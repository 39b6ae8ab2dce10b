import GangwayCore
import ServiceLifecycle

/// Runs what the edge's event streams share: the topic hub's bind/unbind queue and the
/// heartbeat comment on every open stream. On graceful shutdown it ends every event stream, so
/// that the HTTP server (shut down after it) can drain: a stream never ends by itself.
public struct EventStreamService: Service {
    let topics: TopicHub
    let clients: SSEClients
    let heartbeatSeconds: Int

    public init(topics: TopicHub, clients: SSEClients, heartbeatSeconds: Int) {
        self.topics = topics
        self.clients = clients
        self.heartbeatSeconds = heartbeatSeconds
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await topics.run() }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(heartbeatSeconds))
                    clients.heartbeat()
                }
            }
            try? await gracefulShutdown()
            clients.finishAll()
            group.cancelAll()
        }
    }
}
