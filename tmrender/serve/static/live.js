// tmrender live: the microphone goes to the server over WebRTC; the avatar comes back.
// Modes (from /status): mirror (your voice drives the avatar), say (typed text is spoken
// by the avatar: no microphone), reply (your utterances go to a reply program whose
// answers the avatar speaks). In say and reply modes the avatar's voice comes with it.
"use strict";
let pc = null;
let microphone = null;
let channel = null;
let mode = "mirror";
const $ = (id) => document.getElementById(id);
const HELP = {
  mirror: "the avatar speaks with your voice.",
  say: "type a text; the avatar speaks it.",
  reply: "speak; a reply program answers through the avatar.",
};
const speaks = () => mode === "say" || mode === "reply";

function say(text) { $("message").textContent = text || ""; }

function logEvent(event) {
  const line = document.createElement("div");
  line.textContent = `${new Date().toLocaleTimeString()} ${event.text}`;
  if (event.event === "error") line.className = "error";
  $("events").prepend(line);
  while ($("events").childElementCount > 20) $("events").lastChild.remove();
}

function showStats(s) {
  $("mode").textContent = s.mode;
  if (s.state) $("state").textContent = s.state;
  const lines = [
    `latency       ${s.latency_ms === null ? "-" : s.latency_ms + " ms"} (audio in -> frame out, server; ${s.buffer_wait_ms === null ? "-" : s.buffer_wait_ms + " ms"} of it waiting to be sent)`,
    `frame rate    ${s.fps} fps`,
    `frames        ${s.frames_rendered} rendered, ${s.frames_sent} sent`,
    `skipped       ${s.frames_held} held, ${s.frames_dropped} dropped, ${s.audio_dropped_ms} ms audio dropped`,
    `chunks        ${s.speaking_chunks} speaking of ${s.chunks}`,
    `session       ${s.seconds} s`,
  ];
  $("stats").textContent = lines.join("\n");
  if (s.error) say("render error: " + s.error);
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.event) logEvent(message);
  else showStats(message);
}

async function loadMode() {
  try {
    const status = await (await fetch("status")).json();
    mode = status.mode || "mirror";
  } catch (err) {
    return;  // the busy page, or the server is gone: keep the default
  }
  $("mode").textContent = mode;
  $("mode-help").textContent = HELP[mode] || "";
  $("say-form").hidden = mode !== "say";
  $("state-line").hidden = !speaks();
  $("mute").title = mode === "say" ? "mute the avatar's voice" : "mute your microphone";
}

async function waitForIce(connection) {
  if (connection.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const check = () => {
      if (connection.iceGatheringState === "complete") {
        connection.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    connection.addEventListener("icegatheringstatechange", check);
  });
}

async function start() {
  say("");
  $("start").disabled = true;
  pc = new RTCPeerConnection();
  if (mode === "say") {
    pc.addTransceiver("audio", { direction: "recvonly" });
  } else {
    try {
      microphone = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    } catch (err) {
      say("no microphone: " + err.message);
      stop();
      return;
    }
    microphone.getTracks().forEach((track) => pc.addTrack(track, microphone));
  }
  pc.addTransceiver("video", { direction: "recvonly" });
  channel = pc.createDataChannel("stats");
  channel.onmessage = onMessage;
  channel.onopen = () => { $("say-text").disabled = $("say").disabled = false; };
  const stream = new MediaStream();
  pc.ontrack = (event) => {
    stream.addTrack(event.track);  // video and the avatar's voice: played in sync
    $("video").srcObject = stream;
  };
  $("video").muted = !speaks();
  pc.onconnectionstatechange = () => {
    if (["failed", "closed", "disconnected"].includes(pc.connectionState)) {
      say("connection " + pc.connectionState);
    }
  };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIce(pc);
  const response = await fetch("offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const answer = await response.json();
  if (!response.ok) {
    say(answer.error || "the server refused the connection");
    stop();
    return;
  }
  await pc.setRemoteDescription(answer);
  $("mute").disabled = false;
  $("stop").disabled = false;
}

function stop() {
  if (pc) pc.close();
  if (microphone) microphone.getTracks().forEach((track) => track.stop());
  pc = microphone = channel = null;
  $("start").disabled = false;
  $("mute").disabled = true;
  $("stop").disabled = true;
  $("say-text").disabled = $("say").disabled = true;
  $("mute").textContent = "Mute";
  $("state").textContent = "not connected";
}

function toggleMute() {
  if (mode === "say") {  // no microphone: mute the avatar's voice
    $("video").muted = !$("video").muted;
    $("mute").textContent = $("video").muted ? "Unmute" : "Mute";
    return;
  }
  // a muted track still sends silence: the avatar listens with its mouth closed
  const track = microphone && microphone.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  $("mute").textContent = track.enabled ? "Mute" : "Unmute";
}

function sendText(event) {
  event.preventDefault();
  const text = $("say-text").value.trim();
  if (!text || !channel || channel.readyState !== "open") return;
  channel.send(JSON.stringify({ say: text }));
  $("say-text").value = "";
}

$("start").onclick = () => start().catch((err) => { say(String(err)); stop(); });
$("mute").onclick = toggleMute;
$("stop").onclick = stop;
$("say-form").onsubmit = sendText;
// ?autostart=1 connects without a click (scripts/live_browser_shot.py, kiosk use)
loadMode().then(() => {
  if (new URLSearchParams(location.search).get("autostart") === "1") $("start").click();
});
