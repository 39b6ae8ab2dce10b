import ArgumentParser

@main
struct Gangway: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gangway",
        abstract: "An asynchronous API gateway whose backbone is RabbitMQ.",
        subcommands: [EdgeCommand.self, WorkerCommand.self, DevCommand.self, CheckCommand.self, TopologyCommand.self]
    )
}
