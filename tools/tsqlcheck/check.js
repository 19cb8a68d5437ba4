// Offline T-SQL syntax check for watermill-jasper (run by internal/tsqlcheck).
// Reads a JSON object {name: sql} on stdin and writes a JSON object {name: error} on stdout
// holding the statements the grammars-v4 T-SQL grammar (antlr4ts-sql's pre-built TSqlParser)
// rejects, with the first syntax error of each.
const { CharStreams } = require('antlr4ts/CharStreams');
const { CommonTokenStream } = require('antlr4ts/CommonTokenStream');
const { TSqlLexer } = require('antlr4ts-sql/dist/src/grammar-output/tsql/TSqlLexer');
const { TSqlParser } = require('antlr4ts-sql/dist/src/grammar-output/tsql/TSqlParser');
const { CaseChangingStream } = require('antlr4ts-sql/dist/src/models/CaseChangingStream');
const fs = require('fs');

const input = JSON.parse(fs.readFileSync(0, 'utf8'));
const failures = {};
for (const [name, sql] of Object.entries(input)) {
  const errors = [];
  const listener = {
    syntaxError: (recognizer, symbol, line, col, msg) => {
      const near = symbol && symbol.text ? ` near '${symbol.text}'` : '';
      errors.push(`line ${line}:${col}${near}: ${msg.length > 120 ? msg.slice(0, 120) + '…' : msg}`);
    },
  };
  // The grammar's keywords are upper case: the stream upper-cases what the lexer sees.
  const lexer = new TSqlLexer(new CaseChangingStream(CharStreams.fromString(sql), true));
  lexer.removeErrorListeners();
  lexer.addErrorListener(listener);
  const parser = new TSqlParser(new CommonTokenStream(lexer));
  parser.removeErrorListeners();
  parser.addErrorListener(listener);
  parser.tsql_file();
  if (errors.length) failures[name] = errors[0];
}
process.stdout.write(JSON.stringify(failures));
