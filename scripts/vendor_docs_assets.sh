#!/usr/bin/env bash
# Re-fetch the browser assets behind /docs (Swagger UI) and /redoc (ReDoc) from the npm
# registry, at pinned versions, into hub/static/docs/. The hub serves them itself, so the
# documentation pages work with no network access at all.
#
# Usage: bash scripts/vendor_docs_assets.sh      (needs node + npm; run from anywhere)
#
# Only the files the pages load are kept, plus each package's LICENSE and a README.txt
# recording name, exact version and integrity hash of the tarball they came from.
set -euo pipefail

SWAGGER_UI_VERSION="5.35.0"
REDOC_VERSION="3.0.1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo_root/hub/static/docs"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME VERSION -> unpacks into $work/NAME/package, prints integrity
    local name="$1" version="$2"
    mkdir -p "$work/$name"
    (
        cd "$work/$name"
        npm pack --silent --json "$name@$version" >pack.json
        tar -xzf ./*.tgz
    )
    node -e 'const p=require(process.argv[1]); console.log(p[0].integrity)' "$work/$name/pack.json"
}

write_readme() {  # write_readme DIR NAME VERSION INTEGRITY FILES...
    local dir="$1" name="$2" version="$3" integrity="$4"
    shift 4
    {
        echo "Vendored from the npm registry so that the hub's API docs work offline."
        echo
        echo "package:   $name"
        echo "version:   $version"
        echo "integrity: $integrity"
        echo "fetched:   npm pack $name@$version  (by scripts/vendor_docs_assets.sh)"
        echo "license:   see LICENSE in this folder (copied from the package)"
        echo
        echo "Files kept:"
        for f in "$@"; do echo "  $f"; done
        echo
        echo "To upgrade: change the pinned version in scripts/vendor_docs_assets.sh, run it,"
        echo "and run tests/browser/test_docs_render.py (renders the pages in headless Chromium)."
    } >"$dir/README.txt"
}

# --- Swagger UI (swagger-ui-dist 5.x: renders OpenAPI 3.1) -------------------------------
integrity="$(fetch swagger-ui-dist "$SWAGGER_UI_VERSION")"
src="$work/swagger-ui-dist/package"
out="$dest/swagger-ui"
rm -rf "$out"
mkdir -p "$out"
swagger_files=(swagger-ui-bundle.js swagger-ui.css favicon-32x32.png favicon-16x16.png)
for f in "${swagger_files[@]}"; do cp "$src/$f" "$out/$f"; done
cp "$src/LICENSE" "$out/LICENSE"
# The bundle's third-party notices belong with the bundle.
cp "$src/swagger-ui-bundle.js.LICENSE.txt" "$out/swagger-ui-bundle.js.LICENSE.txt"
[ -f "$src/NOTICE" ] && cp "$src/NOTICE" "$out/NOTICE"
# The stylesheet ends with a sourceMappingURL comment; the map is not shipped, so drop the
# comment rather than have browsers' devtools request a missing file.
sed -i -e 's#/\*\# sourceMappingURL=[^*]*\*/##' "$out/swagger-ui.css"
write_readme "$out" swagger-ui-dist "$SWAGGER_UI_VERSION" "$integrity" \
    "${swagger_files[@]}" swagger-ui-bundle.js.LICENSE.txt
echo "Only change: the sourceMappingURL comment at the end of swagger-ui.css was removed" \
    "(the .map files are not shipped)." >>"$out/README.txt"

# --- ReDoc (redoc 3.x standalone bundle: an ES module) ------------------------------------
integrity="$(fetch redoc "$REDOC_VERSION")"
src="$work/redoc/package"
out="$dest/redoc"
rm -rf "$out"
mkdir -p "$out"
cp "$src/bundles/redoc.standalone.js" "$out/redoc.standalone.js"
cp "$src/LICENSE" "$out/LICENSE"
write_readme "$out" redoc "$REDOC_VERSION" "$integrity" redoc.standalone.js
cat >>"$out/README.txt" <<'EOF'

redoc 3's standalone bundle is an ES module (it ends in `export {RedocStandalone, hydrate,
init}`): load it with <script type="module">, not a classic <script>, or it fails with
"Unexpected token 'export'" and nothing renders. There is no global `Redoc` object any more;
import { init } from the module instead (see hub/endpoints/docs.py).
EOF

echo "vendored swagger-ui-dist@$SWAGGER_UI_VERSION and redoc@$REDOC_VERSION into $dest"
