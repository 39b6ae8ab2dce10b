import GangwayAMQPCore
import Yams

/// Reads `definitions.json` in RabbitMQ's own definitions format (the file that
/// `rabbitmqctl import_definitions` loads) into a ``Topology``.
///
/// Only `exchanges`, `queues` and `bindings` matter to Gangway; users, vhosts, permissions,
/// policies and parameters are left to the broker's operator and ignored here. The JSON is read
/// through the YAML composer, of which JSON is a subset, to keep line numbers for messages.
public enum DefinitionsFile {
    static let exchangeTypes: Set<String> = ["direct", "topic", "fanout", "headers", "x-consistent-hash", "x-delayed-message"]

    /// - Throws: ``ConfigurationError`` listing every problem found.
    public static func parse(_ text: String, file: String) throws(ConfigurationError) -> Topology {
        let reader = NodeReader(file: file)
        let topology = read(text, reader)
        if !reader.problems.isEmpty { throw ConfigurationError(problems: reader.problems) }
        return topology
    }

    static func read(_ text: String, _ r: NodeReader) -> Topology {
        var topology = Topology()
        guard let root = r.compose(text), let pairs = r.mapping(root, "the definitions file") else { return topology }
        var exchangeNames: Set<String> = [""]
        var queueNames: Set<String> = []
        var bindingNodes: [Node] = []
        for (key, _, value) in pairs {
            switch key {
            case "exchanges":
                for item in r.sequence(value, "exchanges") ?? [] {
                    if let e = exchange(item, r) {
                        if !exchangeNames.insert(e.name).inserted { r.problem(item, "exchange '\(e.name)' is defined twice") }
                        topology.exchanges.append(e)
                    }
                }
            case "queues":
                for item in r.sequence(value, "queues") ?? [] {
                    if let q = queue(item, r) {
                        if !queueNames.insert(q.name).inserted { r.problem(item, "queue '\(q.name)' is defined twice") }
                        topology.queues.append(q)
                    }
                }
            case "bindings":
                bindingNodes = r.sequence(value, "bindings") ?? []
            default:
                continue
            }
        }
        for item in bindingNodes {
            guard let b = binding(item, r) else { continue }
            if !exchangeNames.contains(b.source) && !b.source.hasPrefix("amq.") {
                r.problem(item, "binding source exchange '\(b.source)' is not defined in exchanges")
            }
            switch b.destinationType {
            case .queue where !queueNames.contains(b.destination):
                r.problem(item, "binding destination queue '\(b.destination)' is not defined in queues")
            case .exchange where !exchangeNames.contains(b.destination):
                r.problem(item, "binding destination exchange '\(b.destination)' is not defined in exchanges")
            default:
                topology.bindings.append(b)
            }
        }
        return topology
    }

    private static let exchangeKeys: Set<String> = ["name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"]
    private static let queueKeys: Set<String> = ["name", "vhost", "durable", "auto_delete", "exclusive", "arguments", "type"]
    private static let bindingKeys: Set<String> = ["source", "vhost", "destination", "destination_type", "routing_key", "arguments", "properties_key"]

    private static func exchange(_ node: Node, _ r: NodeReader) -> ExchangeSpec? {
        guard let pairs = r.mapping(node, "an exchange", allowed: exchangeKeys) else { return nil }
        var spec = ExchangeSpec(name: "", type: "")
        var hasName = false
        var hasType = false
        for (k, _, v) in pairs {
            switch k {
            case "name":
                if let s = r.string(v, "exchange name") {
                    if s.isEmpty || s.hasPrefix("amq.") { r.problem(v, "exchange name '\(s)' is reserved by the broker") }
                    spec.name = s
                    hasName = true
                }
            case "type":
                if let s = r.string(v, "exchange type") {
                    if !exchangeTypes.contains(s) { r.problem(v, "unknown exchange type '\(s)'; expected direct, topic, fanout or headers") }
                    spec.type = s
                    hasType = true
                }
            case "durable": spec.durable = r.bool(v, "durable") ?? spec.durable
            case "auto_delete": spec.autoDelete = r.bool(v, "auto_delete") ?? spec.autoDelete
            case "internal": spec.internal = r.bool(v, "internal") ?? spec.internal
            case "arguments": spec.arguments = r.table(v, "arguments") ?? [:]
            default: continue
            }
        }
        if !hasName { r.problem(node, "exchange has no name") }
        if !hasType { r.problem(node, "exchange '\(spec.name)' has no type") }
        return hasName && hasType ? spec : nil
    }

    private static func queue(_ node: Node, _ r: NodeReader) -> QueueSpec? {
        guard let pairs = r.mapping(node, "a queue", allowed: queueKeys) else { return nil }
        var spec = QueueSpec(name: "")
        var hasName = false
        for (k, _, v) in pairs {
            switch k {
            case "name":
                if let s = r.string(v, "queue name") {
                    if s.isEmpty || s.hasPrefix("amq.") { r.problem(v, "queue name '\(s)' is reserved or empty") }
                    spec.name = s
                    hasName = true
                }
            case "durable": spec.durable = r.bool(v, "durable") ?? spec.durable
            case "auto_delete": spec.autoDelete = r.bool(v, "auto_delete") ?? spec.autoDelete
            case "exclusive": spec.exclusive = r.bool(v, "exclusive") ?? spec.exclusive
            case "arguments":
                spec.arguments = r.table(v, "arguments") ?? [:]
                if case .string(let t)? = spec.arguments["x-queue-type"], !["classic", "quorum", "stream"].contains(t) {
                    r.problem(v, "x-queue-type must be classic, quorum or stream, not '\(t)'")
                }
            case "type":
                // Newer exports carry the queue type here as well; `arguments` is authoritative.
                _ = r.string(v, "type")
            default: continue
            }
        }
        if !hasName { r.problem(node, "queue has no name") }
        return hasName ? spec : nil
    }

    private static func binding(_ node: Node, _ r: NodeReader) -> BindingSpec? {
        guard let pairs = r.mapping(node, "a binding", allowed: bindingKeys) else { return nil }
        var source: String?
        var destination: String?
        var type = BindingSpec.DestinationType.queue
        var key = ""
        var arguments: AMQPTable = [:]
        for (k, _, v) in pairs {
            switch k {
            case "source": source = r.string(v, "binding source")
            case "destination": destination = r.string(v, "binding destination")
            case "destination_type":
                if let s = r.string(v, "destination_type") {
                    if let t = BindingSpec.DestinationType(rawValue: s) { type = t } else { r.problem(v, "destination_type must be queue or exchange, not '\(s)'") }
                }
            case "routing_key": key = r.string(v, "routing_key") ?? ""
            case "arguments": arguments = r.table(v, "arguments") ?? [:]
            default: continue
            }
        }
        guard let source else { r.problem(node, "binding has no source"); return nil }
        guard let destination else { r.problem(node, "binding has no destination"); return nil }
        return BindingSpec(source: source, destination: destination, destinationType: type, routingKey: key, arguments: arguments)
    }
}
