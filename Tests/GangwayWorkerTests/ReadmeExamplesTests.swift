import GangwayAMQPCore
import GangwayWorker
import Logging
import NIOCore
import ServiceLifecycle
import Testing

/// The README's "Writing a worker" examples, as written there: if the SDK changes under them,
/// this file stops compiling. Keep the two in step.
@Suite("The README's worker examples compile and make the workers they say")
struct ReadmeExamplesTests {
    static let logger = Logger(label: "readme")

    /// The first example, up to the worker (its last line runs it: see `runFirstExample`).
    static func firstExample() throws -> Worker {
        let logger = Self.logger
        let worker = Worker(
            configuration: .init(url: try AMQPURL("amqp://localhost"), queue: "demo.echo", prefetch: 64),
            logger: logger
        ) { request in
            // request.body, .contentType, .method, .path, .query, .parameters, .httpHeader("accept"), .requestID
            WorkerReply(status: 200, headers: ["x-handled-by": "swift"], contentType: request.contentType, body: request.body)
        }
        return worker
    }

    /// Compiled, never called: it would need a broker.
    static func runFirstExample() async throws {
        let logger = Self.logger
        let worker = try firstExample()
        try await ServiceGroup(services: [worker], logger: logger).run()
    }

    static func streamingExample(url: AMQPURL) -> Worker {
        let logger = Self.logger
        let counter = Worker(configuration: .init(url: url, queue: "demo.count"), logger: logger) { request, writer in
            for i in 0..<10 {
                try await Task.sleep(for: .milliseconds(100))   // throws CancellationError on cancel
                try await writer.write(ByteBuffer(string: #"{"n":\#(i)}"#), contentType: "application/json", final: i == 9)
            }
        }
        return counter
    }

    static func jobExample(url: AMQPURL) -> Worker {
        let logger = Self.logger
        let renderer = Worker(configuration: .init(url: url, queue: "jobs.render"), logger: logger) { request, job in
            try await job.log("started")
            try await job.progress(50, "half way")
            return ByteBuffer(string: #"{"url": "/renders/\#(job.jobID).png"}"#)   // → job.<id>.done
        }                                                                          // a throw → job.<id>.failed
        return renderer
    }

    @Test("each example makes a worker for the queue and prefetch it names")
    func examples() throws {
        let url = try AMQPURL("amqp://localhost")
        let workers = [try Self.firstExample(), Self.streamingExample(url: url), Self.jobExample(url: url)]
        #expect(workers.map(\.configuration.queue) == ["demo.echo", "demo.count", "jobs.render"])
        #expect(workers.map(\.configuration.prefetch) == [64, 64, 64])
    }
}
