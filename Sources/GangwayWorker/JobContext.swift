import GangwayAMQP
import GangwayAMQPCore
import NIOCore
import Synchronization

/// What a job handler reports with: each call publishes one event on `gangway.events`
/// (`job.<id>.<kind>`, persistent, confirmed) with the next `x-seq`.
public final class JobContext: Sendable {
    public let jobID: String
    private let connection: AMQPConnection
    private let appID: String
    /// Carried over from the job message onto every event (``WireContract/echoedJobHeaders(_:)``).
    private let echoed: AMQPTable
    private let seq = Mutex(0)

    init(jobID: String, connection: AMQPConnection, appID: String, echoed: AMQPTable = [:]) {
        self.jobID = jobID
        self.connection = connection
        self.appID = appID
        self.echoed = echoed
    }

    /// Reports progress: `{"percent": …, "message": …}`.
    public func progress(_ percent: Double, _ message: String = "") async throws {
        try await emit("progress", #"{"percent":\#(percent),"message":\#(Self.quote(message))}"#)
    }

    /// Reports a log line: `{"line": …}`.
    public func log(_ line: String) async throws {
        try await emit("log", #"{"line":\#(Self.quote(line))}"#)
    }

    func emit(_ kind: String, _ json: String) async throws {
        let n = seq.withLock { s -> Int in
            s += 1
            return s
        }
        _ = try await connection.publish(WireContract.jobEvent(jobID: jobID, kind: kind, seq: n, json: json, appID: appID, extraHeaders: echoed))
    }

    static func quote(_ s: String) -> String {
        JSONString.quote(s)
    }
}
