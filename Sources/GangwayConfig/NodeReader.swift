import GangwayAMQPCore
import Yams

/// Walks a composed YAML (or JSON) document and collects problems with their line numbers,
/// so that one run of `gangway check` reports every mistake rather than the first.
final class NodeReader {
    let file: String
    private(set) var problems: [ConfigurationError.Problem] = []

    init(file: String) {
        self.file = file
    }

    /// Parses text into a node tree; syntax errors become a problem with the parser's position.
    func compose(_ text: String) -> Node? {
        do {
            guard let node = try Yams.compose(yaml: text) else {
                problem(nil, "the file is empty")
                return nil
            }
            return node
        } catch let error as YamlError {
            switch error {
            case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _), .composer(_, let problem, let mark, _):
                problems.append(.init(file: file, line: mark.line, column: mark.column, message: "syntax error: \(problem)"))
            default:
                problems.append(.init(file: file, line: 0, message: "syntax error: \(error)"))
            }
            return nil
        } catch {
            problems.append(.init(file: file, line: 0, message: "syntax error: \(error)"))
            return nil
        }
    }

    func problem(_ node: Node?, _ message: String) {
        problems.append(.init(file: file, line: node?.mark?.line ?? 0, column: node?.mark?.column ?? 0, message: message))
    }

    /// The pairs of a mapping with string keys; complains about keys not in `allowed`.
    func mapping(_ node: Node, _ what: String, allowed: Set<String>? = nil) -> [(key: String, keyNode: Node, value: Node)]? {
        guard case .mapping(let mapping) = node else {
            problem(node, "\(what) must be a mapping (key: value)")
            return nil
        }
        var pairs: [(String, Node, Node)] = []
        var seen: Set<String> = []
        for (k, v) in mapping {
            guard case .scalar(let s) = k else {
                problem(k, "keys of \(what) must be plain names")
                continue
            }
            if let allowed, !allowed.contains(s.string) {
                problem(k, "unknown key '\(s.string)' in \(what); expected one of: \(allowed.sorted().joined(separator: ", "))")
                continue
            }
            if !seen.insert(s.string).inserted {
                problem(k, "key '\(s.string)' appears twice in \(what)")
                continue
            }
            pairs.append((s.string, k, v))
        }
        return pairs
    }

    func sequence(_ node: Node, _ what: String) -> [Node]? {
        guard case .sequence(let seq) = node else {
            problem(node, "\(what) must be a list")
            return nil
        }
        return Array(seq)
    }

    func string(_ node: Node, _ what: String) -> String? {
        guard case .scalar(let s) = node else {
            problem(node, "\(what) must be a string")
            return nil
        }
        return s.string
    }

    func bool(_ node: Node, _ what: String) -> Bool? {
        guard case .scalar(let s) = node, s.style == .plain else {
            problem(node, "\(what) must be true or false")
            return nil
        }
        switch s.string {
        case "true", "True", "TRUE", "yes": return true
        case "false", "False", "FALSE", "no": return false
        default:
            problem(node, "\(what) must be true or false, not '\(s.string)'")
            return nil
        }
    }

    /// An AMQP argument value: plain numbers and booleans keep their type, quoted text is text.
    func fieldValue(_ node: Node, _ what: String) -> AMQPFieldValue? {
        switch node {
        case .scalar(let s):
            if s.style == .plain {
                if let i = Int64(s.string) { return .int(i) }
                if s.string == "true" { return .bool(true) }
                if s.string == "false" { return .bool(false) }
                if s.string == "null" || s.string == "~" { return .void }
                if let d = Double(s.string) { return .double(d) }
            }
            return .string(s.string)
        case .mapping:
            guard let pairs = mapping(node, what) else { return nil }
            var table: AMQPTable = [:]
            for (k, _, v) in pairs {
                if let value = fieldValue(v, "\(what).\(k)") { table[k] = value }
            }
            return .table(table)
        case .sequence(let seq):
            return .array(seq.compactMap { fieldValue($0, what) })
        case .alias:
            problem(node, "\(what): YAML aliases are not supported here")
            return nil
        }
    }

    func table(_ node: Node, _ what: String) -> AMQPTable? {
        guard case .table(let t)? = fieldValue(node, what) else {
            if case .mapping = node {} else { problem(node, "\(what) must be a mapping") }
            return nil
        }
        return t
    }
}
