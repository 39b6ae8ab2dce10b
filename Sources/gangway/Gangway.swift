import ArgumentParser
import GangwayAMQPCore

@main
struct Gangway: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gangway",
        abstract: "An asynchronous API gateway whose backbone is RabbitMQ.",
        version: "gangway \(Gangway.version) (wire contract v\(WireContract.version))",
        subcommands: [EdgeCommand.self, WorkerCommand.self, DevCommand.self, CheckCommand.self, TopologyCommand.self]
    )

    /// This release; bump it with every tagged release.
    static let version = "0.1.0"
}
