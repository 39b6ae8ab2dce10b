/// Every mistake found in the configuration files, each with file, line and a plain reason.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible {
    public struct Problem: Sendable, Hashable, CustomStringConvertible {
        public var file: String
        /// 1-based; 0 when the problem concerns the whole file.
        public var line: Int
        public var column: Int
        public var message: String

        public init(file: String, line: Int, column: Int = 0, message: String) {
            self.file = file
            self.line = line
            self.column = column
            self.message = message
        }

        public var description: String {
            line > 0 ? "\(file):\(line):\(column > 0 ? "\(column):" : "") \(message)" : "\(file): \(message)"
        }
    }

    public var problems: [Problem]

    public init(problems: [Problem]) {
        self.problems = problems
    }

    public var description: String {
        problems.map(\.description).joined(separator: "\n")
    }
}
