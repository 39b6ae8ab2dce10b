import ArgumentParser

struct CheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate routes.yaml and definitions.json; report every problem with file and line."
    )

    @OptionGroup var files: FileOptions

    func run() async throws {
        let configuration = try files.load()
        print("ok: \(configuration.routes.routes.count) routes, \(configuration.topology.exchanges.count) exchanges, \(configuration.topology.queues.count) queues, \(configuration.topology.bindings.count) bindings")
    }
}
