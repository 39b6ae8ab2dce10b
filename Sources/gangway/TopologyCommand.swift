import ArgumentParser
import GangwayAMQP

struct TopologyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "topology",
        abstract: "Broker topology.",
        subcommands: [Apply.self]
    )

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Declare the exchanges, queues and bindings of definitions.json (idempotent).")

        @OptionGroup var broker: BrokerOptions
        @OptionGroup var files: FileOptions
        @OptionGroup var log: LogOptions

        @Option(help: "Seconds to wait for the broker.")
        var timeout = 15

        func run() async throws {
            let logger = log.bootstrap(label: "gangway.topology")
            let topology = try files.loadTopology()
            let url = try broker.url()
            let connection = AMQPConnection(configuration: .init(url: url, name: "topology"), logger: logger)
            connection.start()
            guard await connection.waitUntilConnected(timeout: .seconds(timeout)) else {
                await connection.shutdown()
                throw ValidationError("could not connect to \(url) within \(timeout) s: \(connection.lastError ?? "no answer")")
            }
            do {
                try await connection.declare(topology)
            } catch {
                await connection.shutdown()
                throw ValidationError("declaring the topology failed: \(error)")
            }
            await connection.shutdown()
            print("applied: \(topology.exchanges.count) exchanges, \(topology.queues.count) queues, \(topology.bindings.count) bindings")
        }
    }
}
