import Foundation
import Logging

/// A throw-away RabbitMQ node for `gangway dev`: its own name, port and directory, started
/// with Debian's `rabbitmq-server` (no systemd) and stopped on exit.
struct LocalBroker {
    let directory: String
    let port: Int
    let node: String
    private let process: Process

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static let installHint = "RabbitMQ is not installed. On Debian or Ubuntu: sudo apt-get install rabbitmq-server (or set GANGWAY_AMQP_URL to a broker you have)."

    static func start(logger: Logger) throws -> LocalBroker {
        guard let server = which("rabbitmq-server"), let ctl = which("rabbitmqctl") else { throw Failure(description: installHint) }
        let port = try freePort()
        let directory = NSTemporaryDirectory() + "gangway-dev-\(port)-\(getpid())"
        let node = "gwdev\(port)@localhost"
        try FileManager.default.createDirectory(atPath: directory + "/mnesia", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: directory + "/log", withIntermediateDirectories: true)
        try "[].\n".write(toFile: directory + "/enabled_plugins", atomically: true, encoding: .utf8)
        if getuid() == 0 {
            // Debian's wrapper drops to the rabbitmq user, which must own the node's directory.
            _ = run("/bin/chown", ["-R", "rabbitmq:rabbitmq", directory])
        }
        var environment = ProcessInfo.processInfo.environment
        environment["RABBITMQ_NODENAME"] = node
        environment["RABBITMQ_NODE_PORT"] = String(port)
        environment["RABBITMQ_DIST_PORT"] = String(port + 20000)
        environment["RABBITMQ_MNESIA_BASE"] = directory + "/mnesia"
        environment["RABBITMQ_LOG_BASE"] = directory + "/log"
        environment["RABBITMQ_ENABLED_PLUGINS_FILE"] = directory + "/enabled_plugins"
        // The dev node shares the machine with the edge and workers: its schedulers should not
        // spin for work (as scripts/broker.sh does too).
        if environment["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == nil {
            environment["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = "+sbwt none +sbwtdcpu none +sbwtdio none"
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: server)
        process.environment = environment
        process.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        logger.info("dev.broker.starting", metadata: ["broker.node": "\(node)", "broker.port": "\(port)", "broker.dir": "\(directory)"])
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            if run(ctl, ["-n", node, "await_startup", "--timeout", "5"]) == 0 {
                return LocalBroker(directory: directory, port: port, node: node, process: process)
            }
            if !process.isRunning {
                throw Failure(description: "the RabbitMQ node \(node) exited while starting; see \(directory)/log")
            }
            Thread.sleep(forTimeInterval: 1)
        }
        process.terminate()
        throw Failure(description: "the RabbitMQ node \(node) did not start within 120 s; see \(directory)/log")
    }

    var url: String { "amqp://guest:guest@localhost:\(port)/" }

    func stop() {
        if let ctl = Self.which("rabbitmqctl") {
            _ = Self.run(ctl, ["-n", node, "stop"])
        }
        if process.isRunning { process.terminate() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    static func which(_ name: String) -> String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "") + ":/usr/sbin:/sbin:/usr/lib/rabbitmq/bin"
        for dir in path.split(separator: ":") {
            let candidate = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    @discardableResult
    static func run(_ executable: String, _ arguments: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = arguments
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        do { try p.run() } catch { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }

    /// A port the kernel says is free now (bind to 0, read it back).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket() failed") }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else { throw Failure(description: "bind() failed") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        // Keep clear of the distribution port range (port + 20000 must be valid too).
        return port + 20000 > 65535 ? try freePort() : port
    }
}
