# Layers as independent build units: closurepack decides the layering once (the `plan`
# derivation), then every layer is its own derivation (built in parallel, cached and substituted
# one by one), and one last derivation assembles the image from them.
#
#   nix-build --option build-users-group "" examples/nix-per-layer \
#     --argstr closurepack "$(command -v closurepack)"       # single-user Nix as root
#
# The layer list is read from the plan at evaluation time (import from derivation), so Nix
# builds `plan` first while evaluating. The image is the default output; the attributes `plan`,
# `layers` (a list, bottom first) and `app` are there to build or inspect on their own.
{
  # Absolute path of a closurepack executable that runs without PATH (here the host's, as there
  # is no Nix package of closurepack; give the real script, not a pyenv shim).
  closurepack,
  # Anything that changes when that closurepack changes (e.g. a hash of its code): Nix cannot see
  # into a host path, so without it, layers built by an older closurepack are reused as they are.
  # A packaged closurepack (`${closurepack}/bin/closurepack`) makes this unnecessary.
  closurepackId ? "",
  # The closure to pack: by default the bundled example app.
  app ? import ../hello,
  entrypoint ? [ "${app}/bin/hello" ],
  tag ? "hello:latest",
  compression ? "gzip",
  # Seconds since the epoch: the image's creation time (no layer depends on it: files keep
  # mtime 1, as in the store).
  created ? "1",
  maxLayers ? 100,
  strategy ? "auto",
  # How the plan derivation gets the closure graph from exportReferencesGraph:
  # "json" (structured attrs: Nix's own NAR sizes and hashes in .attrs.json; needs /bin/bash)
  # or "text" (path, deriver, reference count, references; sizes read from the store files).
  graphFormat ? "json",
  # What a layer derivation hands to `closurepack build-layer`:
  # "paths": the layer's store paths. The derivation then depends only on its items (and
  #   closurepack and its options), so when the app changes, a layer whose items are the same
  #   keeps its derivation and is not rebuilt.
  # "plan": `--plan ${plan} --layer N`. Every layer then depends on the plan, which changes with
  #   anything in the closure, so every change rebuilds every layer.
  layerInput ? "paths",
}:
let
  inherit (builtins) concatStringsSep elemAt fromJSON genList head length readFile toJSON;
  system = builtins.currentSystem;

  # A derivation whose builder is /bin/sh running `script` (no stdenv: there is no nixpkgs
  # here). The builder starts with no PATH, so scripts call programs by absolute path.
  run = name: attrs: script:
    derivation ({
      inherit name system;
      builder = "/bin/sh";
      args = [ "-eu" "-c" script ];
      CLOSUREPACK_ID = closurepackId;
    } // attrs);

  quote = s: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  cp = quote closurepack;
  planOptions = "--max-layers ${toString maxLayers} --strategy ${quote strategy} --json";

  # The plan: closurepack reads the app's closure graph, which exportReferencesGraph puts in the
  # build directory, and writes the plan as JSON. The plan names the image after the graph
  # file, so in both formats that file is named after the app.
  graphName = app.name or "app";
  plan =
    if graphFormat == "json" then
      derivation {
        name = "closurepack-plan";
        inherit system;
        __structuredAttrs = true;
        exportReferencesGraph.closure = [ app ];
        CLOSUREPACK_ID = closurepackId;
        # With structured attrs the output path is only in .attrs.json/.attrs.sh (bash syntax).
        builder = "/bin/bash";
        args = [ "-eu" "-c" ''
          source "$NIX_ATTRS_SH_FILE"
          /bin/ln -s "$NIX_ATTRS_JSON_FILE" ${quote "${graphName}.json"}
          ${cp} plan --closure ${quote "${graphName}.json"} ${planOptions} -o "''${outputs[out]}"
        '' ];
      }
    else if graphFormat == "text" then
      run "closurepack-plan" { exportReferencesGraph = [ graphName app ]; } ''
        ${cp} plan --closure ${quote graphName} ${planOptions} -o "$out"
      ''
    else
      throw "graphFormat must be \"json\" or \"text\", not ${toJSON graphFormat}";

  # Import from derivation: the plan, read while evaluating. readFile gives the text the context
  # of every store path the plan mentions, which fromJSON refuses; drop it here, and give each
  # layer back exactly its own items with builtins.storePath below.
  planData = fromJSON (builtins.unsafeDiscardStringContext (readFile plan));
  image = head planData.images;

  # Layer n: its inputs are exactly its store items, so Nix makes them present. It is named
  # after its first item, not its position, so a layer that moves keeps its derivation.
  layer = n:
    let
      items = (elemAt image.layers n).paths;
      itemName = p: head (builtins.match "[^-]*-(.*)" (baseNameOf p));
      more = length items - 1;
      name = "closurepack-layer-" + builtins.substring 0 100 (itemName (head items))
        + (if more > 0 then "-and-${toString more}" else "");
      source =
        if layerInput == "paths" then "$items"
        else if layerInput == "plan" then "--plan ${plan} --layer ${toString n}"
        else throw "layerInput must be \"paths\" or \"plan\", not ${toJSON layerInput}";
    in
    run name { items = map builtins.storePath items; } ''
      ${cp} build-layer ${source} \
        --compression ${quote compression} -o "$out"
    '';

  layers = genList layer (length image.layers);

  # The image as a docker-archive: one file, read by `docker load`, `podman load` and skopeo.
  imageArchive = run "closurepack-image.tar" { } ''
    ${cp} assemble ${concatStringsSep " " layers} \
      --entrypoint ${quote (toJSON entrypoint)} --tag ${quote tag} \
      --compression ${quote compression} --created ${quote created} -o "docker-archive:$out"
  '';
in
imageArchive // { inherit app plan layers; }
