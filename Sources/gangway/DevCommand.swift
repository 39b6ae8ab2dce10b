import ArgumentParser
import GangwayAMQPCore
import GangwayWorker
import Logging
import ServiceLifecycle

struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Run the edge and the demo workers; starts a local RabbitMQ when GANGWAY_AMQP_URL is unset."
    )

    @OptionGroup var broker: BrokerOptions
    @OptionGroup var files: FileOptions
    @OptionGroup var log: LogOptions

    @Option(help: "HTTP port. Default: $GANGWAY_HTTP_PORT or 8080.")
    var port: Int?

    func run() async throws {
        let logger = log.bootstrap(label: "gangway.dev")
        let configuration = try files.load()
        let port = try self.port ?? HTTPPort.fromEnvironment() ?? 8080
        var local: LocalBroker?
        let url: AMQPURL
        if broker.amqpURL == nil && BrokerOptions.environmentURL == nil {
            do {
                local = try LocalBroker.start(logger: logger)
            } catch {
                throw ValidationError("\(error)")
            }
            url = try AMQPURL(local!.url)
        } else {
            url = try broker.url()
        }
        defer { local?.stop() }
        let instance = InstanceID.random()
        let connections = try ConnectionBudget.resolve(requested: nil)
        var services = EdgeServices.make(
            url: url,
            configuration: configuration,
            http: .init(host: "0.0.0.0", port: port, maxConnections: connections.limit),
            instanceID: instance,
            logger: logger,
            onServerRunning: { port in
                print(
                    """

                    Gangway is running: edge on http://localhost:\(port), broker \(url), demo workers echo, time, profile, orders, count and render.
                    Try:
                      curl -s -X POST http://localhost:\(port)/v1/echo -H 'content-type: text/plain' -d 'hello gangway'
                      curl -s http://localhost:\(port)/v1/time
                      curl -s http://localhost:\(port)/v1/dashboard
                      curl -sN -X POST 'http://localhost:\(port)/v1/stream/count?n=5' -H 'accept: application/x-ndjson'
                      curl -si -X POST 'http://localhost:\(port)/v1/jobs/render?steps=5'    # then: curl -sN <events_url>
                      curl -sN 'http://localhost:\(port)/v1/topics/stream?match=orders.*' &
                      curl -s -X POST http://localhost:\(port)/v1/topics/orders.created -d '{"id":1}'
                    Live job progress in the browser: http://localhost:\(port)/
                    Ctrl-C stops everything.

                    """
                )
            }
        )
        // The demo handlers compute little and never block: each starts on its connection's
        // thread, as `gangway worker` starts them by default.
        func demo(_ queue: String) -> Worker.Configuration {
            .init(url: url, queue: queue, topology: configuration.topology, handlerStart: .immediate)
        }
        services.append(Worker(configuration: demo("demo.echo"), logger: logger, handler: DemoWorkers.echo(delayMilliseconds: 0)))
        let demos: [(String, Worker.Handler)] = [
            ("demo.time", DemoWorkers.time()), ("demo.profile", DemoWorkers.profile()), ("demo.orders", DemoWorkers.orders()),
        ]
        for (queue, handler) in demos {
            services.append(Worker(configuration: demo(queue), logger: logger, handler: handler))
        }
        services.append(Worker(configuration: demo("demo.count"), logger: logger, streamHandler: DemoWorkers.count()))
        services.append(Worker(configuration: demo("jobs.render"), logger: logger, jobHandler: DemoWorkers.render()))
        let group = ServiceGroup(
            configuration: .init(services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await ListenFailure.explaining(host: "0.0.0.0", port: port) { try await group.run() }
    }
}
