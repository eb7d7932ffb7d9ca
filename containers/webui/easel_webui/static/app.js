// Easel portal: light progressive enhancement. Every page works without it except the
// generate page (which submits and polls) and the direct-to-S3 concept upload.
"use strict";
(function () {
  const csrf = document.body.dataset.csrf || "";
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function api(url, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    opts.headers = Object.assign({ "X-CSRF-Token": csrf, Accept: "application/json" }, opts.headers);
    if (opts.json !== undefined) {
      opts.body = JSON.stringify(opts.json);
      opts.headers["Content-Type"] = "application/json";
      delete opts.json;
    }
    const response = await fetch(url, opts);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) {
      const detail = (data && data.detail) || response.statusText;
      throw new Error(detail);
    }
    return data;
  }

  // Confirm destructive forms.
  $$("form[data-confirm]").forEach((form) => form.addEventListener("submit", (ev) => {
    if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
  }));

  // Gallery Upscale: offer the ESRGAN models of the endpoint in service beside the resamplers.
  const upscalerChoices = $$(".upscaler-choice");
  if (upscalerChoices.length) {
    api("/gallery/upscalers").then((data) => {
      upscalerChoices.forEach((select) => {
        const have = new Set(Array.from(select.options).map((o) => o.value));
        (data.upscalers || []).filter((name) => !have.has(name)).forEach((name) => {
          const option = document.createElement("option");
          option.textContent = name;
          select.appendChild(option);
        });
      });
    }).catch(() => { /* the resamplers stay on offer */ });
  }
  $$(".upscale-form").forEach((form) => form.addEventListener("submit", () => {
    const button = $("button", form);
    button.disabled = true; button.textContent = "Upscaling…";
  }));

  // Deploy form: only types without instance storage take a volume size.
  const instanceType = $("#instance-type");
  if (instanceType) {
    const volume = $("#volume-field");
    const sync = () => {
      const opt = instanceType.selectedOptions[0];
      volume.hidden = !opt || opt.dataset.storage === "yes";
    };
    instanceType.addEventListener("change", sync); sync();
    // only the instance types the chosen model fits (its memory plan, from its manifest; with
    // FP8 weights allowed, those it fits that way too)
    const model = $("select[name=model]");
    const fp8 = $("#fp8-weights");
    const fit = () => {
      const chosen = model.selectedOptions[0];
      const listed = chosen && chosen.dataset.fits !== undefined
        ? (fp8 && fp8.checked ? chosen.dataset.fitsFp8 : chosen.dataset.fits) : undefined;
      const fits = listed !== undefined ? listed.split(" ") : null;
      [...instanceType.options].forEach((opt) => { opt.disabled = fits !== null && !fits.includes(opt.value); });
      if (instanceType.selectedOptions[0] && instanceType.selectedOptions[0].disabled) {
        const first = [...instanceType.options].find((opt) => !opt.disabled);
        if (first) { instanceType.value = first.value; sync(); }
      }
    };
    if (model) { model.addEventListener("change", fit); if (fp8) fp8.addEventListener("change", fit); fit(); }
    const mode = $$("input[name=mode]");
    mode.forEach((m) => m.addEventListener("change", () => {
      const min = $("input[name=min_instances]");
      if (m.checked && m.value === "async") { min.value = 0; }
      if (m.checked && m.value === "realtime" && Number(min.value) < 1) { min.value = 1; }
    }));
  }

  // Endpoint list: refresh live status (every 2 s while one is changing, to follow its steps).
  const list = $("#endpoint-list");
  if (list) {
    const changing = (status) => ["creating", "updating", "systemupdating", "rollingback"]
      .includes(String(status).toLowerCase());
    const refresh = async () => {
      let busy = false;
      try {
        const data = await api(list.dataset.refresh);
        data.endpoints.forEach((e) => {
          const row = list.querySelector(`tr[data-endpoint="${CSS.escape(e.endpoint)}"]`);
          if (!row) return;
          busy = busy || changing(e.status);
          const cell = row.querySelector(".status");
          cell.textContent = e.status;
          cell.className = "status s-" + String(e.status).toLowerCase();
          if (e.progress) { cell.appendChild(document.createElement("br")); const s = document.createElement("small"); s.className = "hint progress"; s.textContent = e.progress; cell.appendChild(s); }
          if (e.failure) { const s = document.createElement("small"); s.className = "error"; s.textContent = " " + e.failure; cell.appendChild(s); }
          if (e.scaling_status === "failed") { const s = document.createElement("small"); s.className = "error scaling-error"; s.textContent = " Scaling not applied: " + e.scaling_error; cell.appendChild(s); }
          row.querySelector(".instances").textContent = e.instances;
          row.querySelector(".cost").textContent = "$" + Number(e.cost_per_hour).toFixed(3);
        });
      } catch (e) { /* keep the last known state */ }
      setTimeout(refresh, busy ? 2000 : 15000);
    };
    const starting = Array.from(list.querySelectorAll(".status")).some((c) => changing(c.textContent.trim().split(/\s/)[0]));
    setTimeout(refresh, starting ? 2000 : 15000);
  }

  // Concept upload: pre-signed POSTs straight to S3, falling back to the portal.
  const upload = $("#concept-upload");
  if (upload) {
    upload.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const status = $(".status", upload); const bar = $("progress", upload);
      const setName = upload.elements.set.value.trim();
      const files = Array.from(upload.elements.files.files);
      if (!files.length) return;
      bar.hidden = false; bar.value = 0; status.textContent = "Uploading…";
      let done = 0;
      const rejected = [];
      try {
        let direct = true;
        const presigned = await api(upload.dataset.presign, { method: "POST", json: {
          set: setName, files: files.map((f) => ({ name: f.name, type: f.type || "" })) } });
        const staged = [];
        for (let i = 0; i < files.length; i++) {
          const target = presigned.uploads[i];
          const form = new FormData();
          Object.entries(target.fields).forEach(([k, v]) => form.append(k, v));
          form.append("file", files[i]);
          let ok = false;
          if (direct) {
            try { ok = (await fetch(target.url, { method: "POST", body: form })).ok; } catch (e) { ok = false; }
          }
          if (ok) {
            staged.push(target.name);
          } else {
            // S3 unreachable or the file broke the policy: send it through the portal instead.
            direct = false;
            const fallback = new FormData();
            fallback.append("set", setName); fallback.append("files", files[i]);
            const answer = await api(upload.dataset.fallback, { method: "POST", body: fallback });
            rejected.push(...answer.rejected);
          }
          done += 1; bar.value = Math.round(100 * done / files.length);
        }
        // Files posted straight to S3 are listed only once the portal has checked them.
        if (staged.length) {
          const answer = await api(presigned.verify, { method: "POST", json: { set: setName, names: staged } });
          rejected.push(...answer.rejected);
        }
        if (rejected.length) {
          status.textContent = `${done - rejected.length} files uploaded; refused: ` +
            rejected.map((r) => r.error).join("; ");
          return;
        }
        status.textContent = `${done} files uploaded.`;
        window.location.reload();
      } catch (e) { status.textContent = "Upload failed: " + e.message; }
    });
  }

  // Generate page.
  const gen = $("#generate-form");
  if (gen) {
    const endpoint = $("#endpoint");
    const fillSelect = (select, items, keep) => {
      const current = select.value;
      select.length = 1;
      items.forEach((name) => { const o = document.createElement("option"); o.value = name; o.textContent = name; select.appendChild(o); });
      if (keep || current) select.value = keep || current;
    };
    const loadOptions = async (keep) => {
      if (!endpoint.value) return;
      try {
        const data = await api("/generate/options?endpoint=" + encodeURIComponent(endpoint.value));
        fillSelect($("#checkpoint"), (data["sd-models"] || []).map((m) => m.title || m.model_name), keep && keep.checkpoint);
        fillSelect($("#sampler"), (data.samplers || []).map((s) => s.name), keep && keep.sampler);
        if ($("#checkpoint").value) loadSamplers(keep && keep.sampler);
        fillSelect($("#cn-model"), ((data["controlnet-models"] || {}).model_list || []));
        // hires fix: the latent and Lanczos upscalers, then the endpoint's ESRGAN models
        const hr = $("#hr-upscaler");
        if (hr && data.hr_upscalers) {
          const chosen = hr.value;
          hr.length = 0;
          data.hr_upscalers.forEach((name) => { const o = document.createElement("option"); o.textContent = name; hr.appendChild(o); });
          if (data.hr_upscalers.includes(chosen)) hr.value = chosen;
        }
        // the endpoint model's native size: what it generates well, and fast enough on a CPU
        const native = data.native_size;
        if (native && !sizeChosen) { gen.elements.width.value = native.width; gen.elements.height.value = native.height; }
        const loras = (data.loras || []).map((l) => l.name);
        const pick = $("#lora-pick");
        const known = new Set($$("option", pick).map((o) => o.value));
        loras.forEach((n) => { if (!known.has(n)) { const o = document.createElement("option"); o.value = n; o.textContent = n; pick.appendChild(o); } });
      } catch (e) { $(".status", gen).textContent = "Could not read the endpoint's models: " + e.message; }
    };
    // The samplers the chosen model takes (SD3.5 / FLUX.1: flow-matching only); the choice stays
    // where still offered. Only the answer to the latest change is used.
    let samplersAsked = 0;
    const loadSamplers = async (keep) => {
      if (!endpoint.value) return;
      const select = $("#sampler");
      const chosen = keep || select.value;
      const asked = ++samplersAsked;
      try {
        const listed = await api("/generate/samplers?endpoint=" + encodeURIComponent(endpoint.value) +
          "&checkpoint=" + encodeURIComponent($("#checkpoint").value));
        if (asked !== samplersAsked) return;
        const names = listed.map((s) => s.name);
        fillSelect(select, names);
        select.value = names.includes(chosen) ? chosen : "";
      } catch (e) { $(".status", gen).textContent = "Could not read the model's samplers: " + e.message; }
    };
    $("#checkpoint").addEventListener("change", () => loadSamplers());
    let sizeChosen = false;
    ["width", "height"].forEach((k) => gen.elements[k].addEventListener("input", () => { sizeChosen = true; }));
    endpoint.addEventListener("change", () => loadOptions());
    $("#lora-add").addEventListener("click", () => {
      const name = $("#lora-pick").value; if (!name) return;
      const prompt = gen.elements.prompt;
      prompt.value = (prompt.value ? prompt.value.trim() + " " : "") + `<lora:${name}:${$("#lora-weight").value}>`;
    });
    const reuse = JSON.parse(gen.dataset.reuse || "{}");
    ["prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "batch_size", "n_iter", "denoising_strength"].forEach((k) => {
      if (reuse[k] !== undefined && gen.elements[k]) gen.elements[k].value = reuse[k];
    });
    if (reuse.width !== undefined) sizeChosen = true;
    loadOptions({ checkpoint: (reuse.override_settings || {}).sd_model_checkpoint, sampler: reuse.sampler_name });

    const fileB64 = (file) => new Promise((resolve, reject) => {
      if (!file.size) { reject(new Error(`${file.name} is empty (0 bytes); choose an image file`)); return; }
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",")[1]);
      reader.onerror = reject; reader.readAsDataURL(file);
    });
    const show = (images) => {
      const box = $("#results .gallery");
      images.forEach((img) => {
        const fig = document.createElement("figure");
        fig.innerHTML = `<a target="_blank" rel="noopener"><img alt=""></a><figcaption><a class="reuse">Reuse settings</a> · <a class="dl">Download</a></figcaption>`;
        fig.querySelector("a").href = img.url; fig.querySelector("img").src = img.url;
        fig.querySelector("img").alt = img.prompt; fig.querySelector(".reuse").href = "/generate?reuse=" + img.image_id;
        fig.querySelector(".dl").href = img.download_url;
        box.prepend(fig);
      });
    };
    // Inpainting: a mask painted over the img2img image. The canvas has the image's own size
    // (drawn white where painted, transparent elsewhere); it is sent as a black-and-white PNG.
    const editor = $("#mask-editor"); const canvas = $("#mask-canvas"); const base = $("#mask-base");
    const ink = canvas.getContext("2d");
    let painted = false;
    const showBase = (src) => {
      if (!src) { editor.hidden = true; return; }
      base.onload = () => {
        canvas.width = base.naturalWidth; canvas.height = base.naturalHeight;
        painted = false; editor.hidden = !$("#img2img").checked;
      };
      base.src = src;
    };
    const syncEditor = () => {
      const reuseBox = $("#init-reuse"); const file = $("#init-file").files[0];
      if (reuseBox && reuseBox.checked) showBase(reuseBox.dataset.url);
      else if (file && file.size) showBase(URL.createObjectURL(file));
      else showBase("");
    };
    $("#init-file").addEventListener("change", syncEditor);
    if ($("#init-reuse")) $("#init-reuse").addEventListener("change", syncEditor);
    $("#img2img").addEventListener("change", syncEditor);
    const at = (ev) => {
      const box = canvas.getBoundingClientRect();
      return [(ev.clientX - box.left) * canvas.width / box.width, (ev.clientY - box.top) * canvas.height / box.height];
    };
    let last = null;
    const brush = () => Number($("#mask-brush").value) * canvas.width / canvas.getBoundingClientRect().width;
    const stroke = (from, to) => {
      ink.globalCompositeOperation = $("#mask-erase").checked ? "destination-out" : "source-over";
      ink.strokeStyle = "#fff"; ink.lineWidth = brush(); ink.lineCap = "round"; ink.lineJoin = "round";
      ink.beginPath(); ink.moveTo(from[0], from[1]); ink.lineTo(to[0], to[1]); ink.stroke();
      painted = true;
    };
    canvas.addEventListener("pointerdown", (ev) => { canvas.setPointerCapture(ev.pointerId); last = at(ev); stroke(last, last); });
    canvas.addEventListener("pointermove", (ev) => { if (!last) return; const next = at(ev); stroke(last, next); last = next; });
    ["pointerup", "pointercancel"].forEach((name) => canvas.addEventListener(name, () => { last = null; }));
    $("#mask-clear").addEventListener("click", () => { ink.clearRect(0, 0, canvas.width, canvas.height); painted = false; });
    $("#mask-invert").addEventListener("click", () => {
      const pixels = ink.getImageData(0, 0, canvas.width, canvas.height);
      for (let i = 0; i < pixels.data.length; i += 4) {
        pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = 255;
        pixels.data[i + 3] = 255 - pixels.data[i + 3];
      }
      ink.putImageData(pixels, 0, 0); painted = true;
    });
    const maskB64 = () => {
      const out = document.createElement("canvas"); out.width = canvas.width; out.height = canvas.height;
      const paint = out.getContext("2d");
      paint.fillStyle = "#000"; paint.fillRect(0, 0, out.width, out.height); paint.drawImage(canvas, 0, 0);
      return out.toDataURL("image/png").split(",")[1];
    };

    // Live progress: the poll carries the step and a preview; Interrupt and Skip set a flag
    // the task running the job acts on (any portal task may answer these calls).
    const live = $("#live"); const preview = $("#live-preview");
    let current = null; let stopping = null;
    const stop = async (action) => {
      if (!current) return;
      try { await api(`${current}/${action}`, { method: "POST" }); stopping = action; }
      catch (e) { $(".status", gen).textContent = `Could not ${action}: ${e.message}`; }
    };
    $("#interrupt-button").addEventListener("click", () => stop("interrupt"));
    $("#skip-button").addEventListener("click", () => stop("skip"));
    gen.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const el = gen.elements; const status = $(".status", gen); const bar = $("progress", gen); const button = $("#generate-button");
      const payload = { prompt: el.prompt.value, negative_prompt: el.negative_prompt.value,
        steps: Number(el.steps.value), cfg_scale: Number(el.cfg_scale.value), seed: Number(el.seed.value),
        width: Number(el.width.value), height: Number(el.height.value), batch_size: Number(el.batch_size.value),
        n_iter: Number(el.n_iter.value) };
      if (el.sampler_name.value) payload.sampler_name = el.sampler_name.value;
      if (el.checkpoint.value) payload.override_settings = { sd_model_checkpoint: el.checkpoint.value };
      let task = "txt2img";
      try {
        if ($("#img2img").checked) {
          task = "img2img"; payload.denoising_strength = Number(el.denoising_strength.value);
          const reuseBox = $("#init-reuse");
          if (reuseBox && reuseBox.checked) payload.init_image_id = reuseBox.value;
          else if ($("#init-file").files[0]) payload.init_images = [await fileB64($("#init-file").files[0])];
          else throw new Error("choose an image to start from");
          if (painted) {
            payload.mask = maskB64(); payload.mask_blur = Number(el.mask_blur.value);
            payload.inpainting_fill = Number(el.inpainting_fill.value);
            payload.inpaint_full_res = el.inpaint_full_res.checked;
            payload.inpaint_full_res_padding = Number(el.inpaint_full_res_padding.value);
          }
        }
        if ($("#hr-on").checked) {
          if (task !== "txt2img") throw new Error("hires fix is for text to image: untick one of them");
          Object.assign(payload, { enable_hr: true, hr_upscaler: $("#hr-upscaler").value, hr_scale: Number($("#hr-scale").value),
            hr_second_pass_steps: Number($("#hr-steps").value), denoising_strength: Number($("#hr-denoising").value) });
        }
        if ($("#xy-on").checked) {
          if (task !== "txt2img") throw new Error("an X/Y plot is for text to image: untick one of them");
          payload.xy_plot = { x: { type: $("#xy-x-type").value, values: $("#xy-x-values").value },
            y: { type: $("#xy-y-type").value, values: $("#xy-y-values").value } };
        }
        if ($("#cn-on").checked) {
          const file = $("#cn-file").files[0] || $("#init-file").files[0];
          if (!file) throw new Error("choose a control image for ControlNet");
          payload.alwayson_scripts = { controlnet: { args: [{ enabled: true, module: "canny", model: $("#cn-model").value,
            weight: Number($("#cn-weight").value), image: await fileB64(file) }] } };
        }
        button.disabled = true; bar.hidden = false; bar.removeAttribute("value"); status.textContent = "Submitting…";
        const job = await api("/generate", { method: "POST", json: { endpoint: endpoint.value, task, payload } });
        const started = Date.now();
        live.hidden = false; stopping = null; current = job.poll; let lastBatch = 0;
        for (;;) {
          await sleep(700);
          const state = await api(job.poll);
          const p = state.progress;
          if (p) {
            if (stopping === "skip" && lastBatch && p.batch !== lastBatch) stopping = null;
            lastBatch = p.batch; bar.value = p.fraction;
            const left = p.eta != null ? `, about ${Math.ceil(p.eta)} s left` : "";
            const batch = p.batches > 1 ? ` (image set ${p.batch} of ${p.batches})` : "";
            status.textContent = `Step ${p.step} of ${p.steps}${batch}${left}`;
            if (p.preview) { preview.src = "data:image/jpeg;base64," + p.preview; preview.hidden = false; }
          } else {
            status.textContent = `Running on ${state.endpoint}… ${Math.round((Date.now() - started) / 1000)} s`;
          }
          if (stopping) status.textContent += stopping === "interrupt" ? " — interrupting…" : " — skipping…";
          if (state.status === "done") {
            show(state.images);
            const note = state.stopped === "interrupt" ? " (interrupted; finished images kept)" : state.stopped === "skip" ? " (skipped images dropped)" : "";
            const failed = (state.failed_cells || []).map((c) => `${c.x}, ${c.y}: ${c.error}`);
            const cells = failed.length ? ` ${failed.length} plot cell(s) failed (grey in the grid): ${failed.join("; ")}` : "";
            status.textContent = `Done in ${state.elapsed} s${note}.${cells}`; break;
          }
          if (state.status === "interrupted") { status.textContent = state.error; break; }
          if (state.status === "failed") { throw new Error(state.error); }
        }
      } catch (e) { status.textContent = "Failed: " + e.message; }
      finally { button.disabled = false; bar.hidden = true; live.hidden = true; preview.hidden = true; current = null; }
    });
  }

  // Training job page: follow progress until the job ends.
  const job = $("#job");
  if (job && job.dataset.final !== "yes") {
    (async () => {
      let last = null;
      for (;;) {
        await sleep(10000);
        try {
          const state = await api(job.dataset.statusUrl);
          $("progress", job).value = state.percent; $(".percent", job).textContent = state.percent;
          $(".job-status", job).textContent = state.status; $(".phase", job).textContent = state.phase_label || "";
          const previews = (state.previews || []).length;
          if (["Completed", "Failed", "Stopped"].includes(state.status) || (last !== null && previews !== last)) { window.location.reload(); return; }
          last = previews;
        } catch (e) { /* try again */ }
      }
    })();
  }
})();
