// The front's request check (njs, Debian's libnginx-mod-http-js; the official nginx image ships it too).
//
// Why: tritonserver 2.51 crashes (SIGSEGV) on an HTTP JSON body nested ~120 000 levels deep, on any
// endpoint, and nginx cannot look into JSON by itself. Every request to an allowed endpoint comes here
// first (js_content reads the whole body into memory: client_body_buffer_size = client_max_body_size),
// is refused with 400 when its JSON nests deeper than $front_max_json_depth, and otherwise goes on to
// the backends through an internal redirect (the body already read is passed on, not read twice).
//
// Only the JSON part is checked: with Triton's binary tensor extension the JSON header is the first
// Inference-Header-Content-Length bytes and the rest is raw tensor data that Triton never parses.
//
// The same pass reads `parameters.sequence_id` of an HTTP sequence request into $affinity_body, so an
// HTTP client that does not send x-mambaserve-affinity still keeps its sequence on one replica.

var SEQUENCE_ID = /"sequence_id"\s*:\s*("((?:[^"\\]|\\.)*)"|-?[0-9]+)/;

// Is the JSON nested deeper than `limit` ([ and { outside strings)? njs pays microseconds per regular
// expression match and ~0.1 us per character in a JavaScript loop (measured through this front on a
// loaded 2-core machine: a per-character regular expression took over a minute on 10 MB), so:
// - usual bodies (under 512 brackets and quotes, however long: 30 s of audio as JSON numbers is
//   ~11 MB with a dozen of them): C regular expressions drop strings and everything but brackets,
//   and the loop walks what is left (0.3 s for 11 MB);
// - bodies dense in brackets or quotes: one linear loop that stops at the first level over the limit
//   (0.06 s for 200 000 levels; about 3 s for 16 MB of "[0]," or "\"a\","; the body limit and the
//   per-client limits bound how often a client can ask for that).
var DENSE = /^(?:[^\[\]{}"]*[\[\]{}"]){512}/; // anchored: one linear attempt, no rescans
var STRINGS = /"[^"\\]*(?:\\[\s\S][^"\\]*)*"/g;
var NOT_BRACKETS = /[^\[\]{}]+/g;

function deeperThan(text, limit) {
    if (!DENSE.test(text)) {
        text = text.replace(STRINGS, '""').replace(NOT_BRACKETS, '');
    }
    var depth = 0;
    var inString = false;
    var escaped = false;
    for (var i = 0; i < text.length; i++) {
        var c = text.charCodeAt(i);
        if (inString) {
            if (escaped) {
                escaped = false;
            } else if (c === 92) {
                escaped = true;
            } else if (c === 34) {
                inString = false;
            }
        } else if (c === 34) {
            inString = true;
        } else if (c === 91 || c === 123) {
            depth++;
            if (depth > limit) {
                return true;
            }
        } else if (c === 93 || c === 125) {
            depth--;
        }
    }
    return false;
}

function refuse(r, status, message) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({error: 'mambaserve front: ' + message}) + '\n');
}

function check(r) {
    var limit = parseInt(r.variables.front_max_json_depth, 10);
    var declared = parseInt(r.headersIn['Content-Length'] || '0', 10);
    var body = r.requestBuffer;
    if (body === undefined || body === null) {
        if (declared > 0 || r.headersIn['Transfer-Encoding'] !== undefined) {
            // Fail closed: a body nginx kept out of memory cannot be checked.
            refuse(r, 413, 'request body not checkable (larger than the front buffers)');
            return;
        }
        r.internalRedirect('@triton');
        return;
    }
    var n = body.length;
    var header = r.headersIn['Inference-Header-Content-Length'];
    if (header !== undefined) {
        n = parseInt(header, 10);
        if (!(n >= 0 && n <= body.length)) {
            refuse(r, 400, 'Inference-Header-Content-Length is not within the body');
            return;
        }
    }
    var text = body.slice(0, n).toString();
    if (deeperThan(text, limit)) {
        refuse(r, 400, 'JSON nested more than ' + limit + ' levels deep');
        return;
    }
    if (!r.headersIn['x-mambaserve-affinity']) {
        var m = SEQUENCE_ID.exec(text);
        if (m) {
            r.variables.affinity_body = m[2] !== undefined ? m[2] : m[1];
        }
    }
    r.internalRedirect('@triton');
}

export default {check, deeperThan};
