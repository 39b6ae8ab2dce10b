import ArgumentParser
import GangwayAMQPCore
import GangwayWorker
import Logging
import ServiceLifecycle

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a demo worker.",
        subcommands: [Echo.self, Time.self, Profile.self, Orders.self, Count.self, Render.self]
    )

    struct Common: ParsableArguments {
        @OptionGroup var broker: BrokerOptions
        @OptionGroup var files: FileOptions
        @OptionGroup var log: LogOptions

        @Option(help: "Messages in flight at once (the consumer prefetch).")
        var prefetch: UInt16 = 64

        @Option(help: "Replier id sent as x-replier (for gather routes).")
        var replierID: String?

        @Option(help: """
            Seconds that in-flight work may take to finish after SIGTERM or SIGINT; then it is \
            interrupted: unfinished requests and jobs are left for redelivery to another worker, \
            streams end with an error. Default: wait for it all.
            """)
        var shutdownTimeout: Double?

        @Option(help: """
            Where each handler starts: 'immediate' runs it on the connection's thread until it \
            first suspends (no thread wake-up per message; right for the demo handlers, which \
            compute little and never block), 'task' starts it as a task on the global executor.
            """)
        var handlerStart: Worker.HandlerStart = .immediate

        @Flag(inversion: .prefixedNo, help: "Run the connection's thread as a Linux batch thread (SCHED_BATCH): fewer preemptions under load.")
        var batchScheduling = true

        func run(queue: String, handler: @escaping Worker.Handler) async throws {
            try await run { configuration, logger in Worker(configuration: configuration.with(queue: queue), logger: logger, handler: handler) }
        }

        func run(queue: String, jobHandler: @escaping Worker.JobHandler) async throws {
            try await run { configuration, logger in Worker(configuration: configuration.with(queue: queue), logger: logger, jobHandler: jobHandler) }
        }

        func run(queue: String, streamHandler: @escaping Worker.StreamHandler) async throws {
            try await run { configuration, logger in Worker(configuration: configuration.with(queue: queue), logger: logger, streamHandler: streamHandler) }
        }

        private func run(_ make: (Worker.Configuration, Logger) -> Worker) async throws {
            let logger = log.bootstrap(label: "gangway.worker")
            guard prefetch > 0 else { throw ValidationError("--prefetch must be at least 1") }
            if let shutdownTimeout, !(shutdownTimeout > 0 && shutdownTimeout <= 86_400) {
                throw ValidationError("--shutdown-timeout must be more than 0 and at most 86400 seconds")
            }
            let worker = make(.init(url: try broker.url(), queue: "", prefetch: prefetch, topology: try files.loadTopology(), replierID: replierID, handlerStart: handlerStart, batchScheduling: batchScheduling), logger)
            var configuration = ServiceGroupConfiguration(services: [.init(service: worker)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
            configuration.maximumGracefulShutdownDuration = shutdownTimeout.map { .milliseconds(Int64($0 * 1000)) }
            try await ServiceGroup(configuration: configuration).run()
        }
    }

    struct Echo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Answer with the request's body and content type.")

        @OptionGroup var common: Common

        @Option(help: "Queue to consume.")
        var queue = "demo.echo"

        @Option(help: "Sleep this long before answering (to demonstrate timeouts and redelivery).")
        var delayMs = 0

        func run() async throws {
            try await common.run(queue: queue, handler: DemoWorkers.echo(delayMilliseconds: delayMs))
        }
    }

    struct Time: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Answer with the current time as JSON.")

        @OptionGroup var common: Common

        @Option(help: "Queue to consume.")
        var queue = "demo.time"

        func run() async throws {
            try await common.run(queue: queue, handler: DemoWorkers.time())
        }
    }

    struct Profile: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Answer with a demo user profile (JSON).")

        @OptionGroup var common: Common

        @Option(help: "Queue to consume.")
        var queue = "demo.profile"

        func run() async throws {
            try await common.run(queue: queue, handler: DemoWorkers.profile())
        }
    }

    struct Orders: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Answer with a demo user's orders (JSON).")

        @OptionGroup var common: Common

        @Option(help: "Queue to consume.")
        var queue = "demo.orders"

        func run() async throws {
            try await common.run(queue: queue, handler: DemoWorkers.orders())
        }
    }

    struct Count: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Stream n numbered parts (?n=10&delay_ms=100).")

        @OptionGroup var common: Common

        @Option(help: "Queue to consume.")
        var queue = "demo.count"

        func run() async throws {
            try await common.run(queue: queue, streamHandler: DemoWorkers.count())
        }
    }
}

extension Worker.HandlerStart: ExpressibleByArgument {
    public init?(argument: String) {
        guard let start = Self.all.first(where: { $0.description == argument }) else { return nil }
        self = start
    }

    public static var allValueStrings: [String] { all.map(\.description) }
}

extension WorkerCommand {
    struct Render: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Run demo render jobs, reporting progress (?steps=5&delay_ms=500).")

        @OptionGroup var common: Common

        @Option(help: "Queue to consume.")
        var queue = "jobs.render"

        func run() async throws {
            try await common.run(queue: queue, jobHandler: DemoWorkers.render())
        }
    }
}

extension Worker.Configuration {
    func with(queue: String) -> Worker.Configuration {
        var copy = self
        copy.queue = queue
        copy.name = "worker.\(queue)"
        return copy
    }
}
