/// Broker topology: what the edge and workers declare at start and after every reconnect.
///
/// Mirrors the `exchanges`, `queues` and `bindings` sections of RabbitMQ's definitions format.
public struct Topology: Sendable, Hashable {
    public var exchanges: [ExchangeSpec]
    public var queues: [QueueSpec]
    public var bindings: [BindingSpec]

    public init(exchanges: [ExchangeSpec] = [], queues: [QueueSpec] = [], bindings: [BindingSpec] = []) {
        self.exchanges = exchanges
        self.queues = queues
        self.bindings = bindings
    }

    /// This topology plus `exchange`, unless one of that name is declared already.
    public func ensuring(_ exchange: ExchangeSpec) -> Topology {
        guard !exchanges.contains(where: { $0.name == exchange.name }) else { return self }
        var copy = self
        copy.exchanges.append(exchange)
        return copy
    }

    /// This topology plus `queue`, unless one of that name is declared already.
    public func ensuring(_ queue: QueueSpec) -> Topology {
        guard !queues.contains(where: { $0.name == queue.name }) else { return self }
        var copy = self
        copy.queues.append(queue)
        return copy
    }

    /// This topology plus `binding`, unless it is declared already.
    public func ensuring(_ binding: BindingSpec) -> Topology {
        guard !bindings.contains(binding) else { return self }
        var copy = self
        copy.bindings.append(binding)
        return copy
    }

    /// The queues a direct-style publish to `exchange` with `routingKey` lands in, as far as
    /// the declared topology tells; the default exchange routes to the queue of that name.
    public func queues(forExchange exchange: String, routingKey: String) -> [String] {
        if exchange.isEmpty { return [routingKey] }
        guard let spec = exchanges.first(where: { $0.name == exchange }) else { return [] }
        switch spec.type {
        case "direct":
            return bindings.filter {
                $0.source == exchange && $0.destinationType == .queue && $0.routingKey == routingKey
            }.map(\.destination)
        case "fanout":
            return bindings.filter { $0.source == exchange && $0.destinationType == .queue }.map(\.destination)
        default:
            return []
        }
    }
}

public struct ExchangeSpec: Sendable, Hashable {
    public var name: String
    /// `direct`, `topic`, `fanout` or `headers`.
    public var type: String
    public var durable: Bool
    public var autoDelete: Bool
    public var `internal`: Bool
    public var arguments: AMQPTable

    public init(name: String, type: String, durable: Bool = true, autoDelete: Bool = false, internal: Bool = false, arguments: AMQPTable = [:]) {
        self.name = name
        self.type = type
        self.durable = durable
        self.autoDelete = autoDelete
        self.internal = `internal`
        self.arguments = arguments
    }
}

public struct QueueSpec: Sendable, Hashable {
    public var name: String
    public var durable: Bool
    public var exclusive: Bool
    public var autoDelete: Bool
    public var arguments: AMQPTable

    public init(name: String, durable: Bool = true, exclusive: Bool = false, autoDelete: Bool = false, arguments: AMQPTable = [:]) {
        self.name = name
        self.durable = durable
        self.exclusive = exclusive
        self.autoDelete = autoDelete
        self.arguments = arguments
    }

    /// True for a RabbitMQ stream queue (`x-queue-type: stream`).
    public var isStream: Bool {
        arguments["x-queue-type"]?.stringValue == "stream"
    }
}

public struct BindingSpec: Sendable, Hashable {
    public enum DestinationType: String, Sendable, Hashable {
        case queue
        case exchange
    }

    public var source: String
    public var destination: String
    public var destinationType: DestinationType
    public var routingKey: String
    public var arguments: AMQPTable

    public init(source: String, destination: String, destinationType: DestinationType = .queue, routingKey: String, arguments: AMQPTable = [:]) {
        self.source = source
        self.destination = destination
        self.destinationType = destinationType
        self.routingKey = routingKey
        self.arguments = arguments
    }
}
