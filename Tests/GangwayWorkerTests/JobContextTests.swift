import GangwayAMQP
import GangwayAMQPCore
import Logging
import Synchronization
import Testing

@testable import GangwayWorker

/// A broker stand-in for one job's events: records every publish (its `x-seq` and kind), how
/// many were in flight at once, and settles each as the test's script says.
private final class EventRecorder: Sendable {
    struct Published: Equatable, CustomStringConvertible {
        var seq: Int
        var kind: String
        var description: String { "\(seq) \(kind)" }
    }

    private struct State {
        var published: [Published] = []
        var inFlight = 0
        var mostInFlight = 0
        /// What the n-th publish (0-based) gets instead of a confirm.
        var script: [Int: Result<PublishOutcome, AMQPError>] = [:]
    }

    private let state: Mutex<State>

    init(script: [Int: Result<PublishOutcome, AMQPError>] = [:]) {
        state = Mutex(State(script: script))
    }

    var published: [Published] { state.withLock { $0.published } }
    var mostInFlight: Int { state.withLock { $0.mostInFlight } }

    func publish(_ message: OutboundMessage) async throws -> PublishOutcome {
        let seq = Int(message.properties.headers[WireContract.Header.seq]?.intValue ?? -1)
        let kind = String(message.routingKey.split(separator: ".").last ?? "")
        let outcome = state.withLock { s -> Result<PublishOutcome, AMQPError> in
            let outcome = s.script[s.published.count] ?? .success(.confirmed)
            s.published.append(Published(seq: seq, kind: kind))
            s.inFlight += 1
            s.mostInFlight = max(s.mostInFlight, s.inFlight)
            return outcome
        }
        // The confirm takes a while, as a broker's does: long enough for other calls to start.
        try? await Task.sleep(for: .milliseconds(1))
        state.withLock { $0.inFlight -= 1 }
        return try outcome.get()
    }
}

private func context(_ recorder: EventRecorder) -> JobContext {
    JobContext(jobID: "j1", appID: "test", logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })) { try await recorder.publish($0) }
}

@Suite("Job events")
struct JobContextTests {
    @Test("events reported from several tasks at once go out one at a time, numbered in the order they go out")
    func concurrentReports() async throws {
        let recorder = EventRecorder()
        let job = context(recorder)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0 ..< 8 {
                group.addTask {
                    for step in 0 ..< 10 { try await job.progress(Double(step * 10), "task \(task)") }
                }
            }
            try await group.waitForAll()
        }
        #expect(recorder.mostInFlight == 1)
        #expect(recorder.published.map(\.seq) == Array(1...80))
    }

    @Test("an event whose publish failed is published again, with its x-seq, before the next one")
    func failedEventSentAgain() async throws {
        // The second publish (event 2) is lost with the connection before its confirm.
        let recorder = EventRecorder(script: [1: .failure(.unconfirmed("connection lost"))])
        let job = context(recorder)
        try await job.log("started")
        await #expect(throws: AMQPError.self) { try await job.progress(50, "half") }
        // A handler that goes on after the failed report (`try?`): no hole at 2.
        try await job.progress(100, "all")
        try await job.emit("done", "null")
        #expect(recorder.published == [.init(seq: 1, kind: "log"), .init(seq: 2, kind: "progress"), .init(seq: 2, kind: "progress"), .init(seq: 3, kind: "progress"), .init(seq: 4, kind: "done")])
    }

    @Test("an event that cannot be sent again keeps the later one from going out")
    func laterEventWaitsForEarlier() async throws {
        // Event 2 fails, and so does its second attempt: event 3 is not given a number yet.
        let recorder = EventRecorder(script: [1: .failure(.unconfirmed("lost")), 2: .failure(.notConnected("test"))])
        let job = context(recorder)
        try await job.log("started")
        await #expect(throws: AMQPError.self) { try await job.progress(50) }
        await #expect(throws: AMQPError.self) { try await job.progress(100) }
        try await job.emit("done", "null")
        #expect(recorder.published.map(\.seq) == [1, 2, 2, 2, 3])
        #expect(recorder.published.last?.kind == "done")
    }

    @Test("a nacked or returned event is published again until it is confirmed")
    func refusedEventRetried() async throws {
        // A nack, then a return (the event reached no queue), then the confirm.
        let recorder = EventRecorder(script: [0: .success(.nacked), 1: .success(.returned(replyCode: 312, replyText: "NO_ROUTE"))])
        let job = context(recorder)
        try await job.log("started")
        try await job.emit("done", "null")
        #expect(recorder.published.map(\.seq) == [1, 1, 1, 2])
    }

    @Test("events are published mandatory, so that one that reaches no queue comes back")
    func mandatory() async throws {
        let event = WireContract.jobEvent(jobID: "j1", kind: "log", seq: 1, json: "{}", appID: "test")
        #expect(event.mandatory && event.properties.messageID == "j1.1")
    }
}
