"""A small in-memory JSON API (entrypoint `jsonapi.main`), in the `def main(request)` style.

  GET    /            -> 200 {"items": [...]}               (?q=text filters by name)
  GET    /<id>        -> 200 the item, or 404
  POST   /            -> 201 the new item, from {"name": str, "price": number >= 0}
  DELETE /<id>        -> 204, or 404
Anything invalid gets a JSON error {"error": {"code", "message"}} with status 400/404/405.
The items live in this instance's memory: each instance of the function has its own list.
"""

import threading

_lock = threading.Lock()
_items = []
_next_id = 1


def _error(status, code, message):
    return {"error": {"code": code, "message": message}}, status


def _validate(data):
    if not isinstance(data, dict):
        return "the body must be a JSON object"
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        return "'name' must be a non-empty string"
    if len(name) > 100:
        return "'name' must be at most 100 characters"
    price = data.get("price", 0)
    if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
        return "'price' must be a number >= 0"
    unknown = sorted(set(data) - {"name", "price"})
    if unknown:
        return "unknown field(s): " + ", ".join(unknown)
    return None


def _find(item_id):
    for item in _items:
        if item["id"] == item_id:
            return item
    return None


def main(request):
    global _next_id
    segment = request.path.strip("/").rpartition("/")[2]
    item_id = None
    if segment:
        if not segment.isdigit():
            return _error(404, "not_found", "no item %r" % segment)
        item_id = int(segment)

    if request.method == "GET":
        with _lock:
            if item_id is not None:
                item = _find(item_id)
                return item if item else _error(404, "not_found", "no item %d" % item_id)
            q = request.args.get("q", "").lower()
            return {"items": [i for i in _items if q in i["name"].lower()]}

    if request.method == "POST" and item_id is None:
        data = request.get_json(silent=True, force=True)
        if data is None:
            return _error(400, "invalid_json", "the body must be valid JSON")
        problem = _validate(data)
        if problem:
            return _error(400, "invalid_item", problem)
        with _lock:
            item = {"id": _next_id, "name": data["name"].strip(), "price": data.get("price", 0)}
            _next_id += 1
            _items.append(item)
        return item, 201, {"Location": "/%d" % item["id"]}

    if request.method == "DELETE" and item_id is not None:
        with _lock:
            item = _find(item_id)
            if item is None:
                return _error(404, "not_found", "no item %d" % item_id)
            _items.remove(item)
        return "", 204

    return _error(405, "method_not_allowed", "%s is not supported here" % request.method)
